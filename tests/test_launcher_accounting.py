"""The launcher benchmark's accounting helpers (``batchinfer_testing.launcher_path``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dagster import DagsterRunStatus

from batchinfer_testing.launcher_path import CpuLedger, DrainRecord, RunTimes, component


def run(model_started: float | None, model_seconds: float | None) -> RunTimes:
    return RunTimes(
        run_id=f"run-{model_started}",
        status=DagsterRunStatus.SUCCESS,
        created=0.0,
        launched=0.0,
        started=0.0,
        step_started=0.0,
        model_started=model_started,
        finished=None,
        model_seconds=model_seconds,
    )


def test_sending_seconds_is_the_union_of_the_model_phases() -> None:
    # 0-10 and 5-12 overlap (12 s), 12-15 touches the end of 5-12 (3 s), 14-14.5 lies inside
    # 12-15, 20-25 stands alone (5 s); a run that never reached the model counts nothing.
    record = DrainRecord(
        runs=[
            run(5.0, 7.0),
            run(0.0, 10.0),
            run(12.0, 3.0),
            run(14.0, 0.5),
            run(20.0, 5.0),
            run(None, None),
        ]
    )
    assert record.sending_seconds() == 20.0


def test_no_model_phase_means_no_sending() -> None:
    assert DrainRecord(runs=[run(None, None)]).sending_seconds() == 0.0


def test_components_are_named_from_command_lines() -> None:
    assert component("/venv/bin/python -m model_server") == "model server"
    worker = "python3.11 -B -c from multiprocessing.spawn import spawn_main; spawn_main(x)"
    assert component(worker) == "run workers"
    assert component("python3.11 -m dagster api grpc --lazy-load-user-code") == "code server"
    assert component("postgres: postgres app 127.0.0.1(5432) idle") == "PostgreSQL"
    assert component("java -jar cloud-pubsub-emulator-0.8.20-all.jar") == "Pub/Sub emulator"
    assert component("python -m bench.bench_launcher") == "other"


def test_the_cpu_ledger_counts_a_child_that_ran_after_the_start() -> None:
    ledger = CpuLedger((os.getpid(),))
    ledger.start()
    busy = (
        "import sys, time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE)
    try:
        for _ in range(200):
            ledger.sample()
            if ledger.last.get(child.pid, 0.0) >= 0.3:
                break
            time.sleep(0.05)
    finally:
        child.communicate(b"")
    # The child started after ``start()``: all its CPU counts, under "other" (its command line
    # names no component), and it is among the top processes.
    assert child.pid not in ledger.before
    assert component(ledger.commands[child.pid]) == "other"
    assert ledger.last[child.pid] >= 0.3
    assert ledger.by_component()["other"] >= 0.3
    assert any(cpu >= 0.3 and "process_time" in command for cpu, command in ledger.top())
