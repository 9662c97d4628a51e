"""Ctrl-C of ``make run`` with a run in flight: one line per interrupted run, no traceback,
nothing left running, nothing lost.

``make run`` on a fresh ``BATCHINFER_HOME`` in a private network namespace, as
``tests/test_make_run.py`` starts it; once everything is ready, a backlog is published straight
into the local queue, and as soon as a run worker says its step started, the whole foreground
process group gets SIGINT, as a terminal sends it. Then ``make run`` again on the same home: the
interrupted batches are retried and every request ends predicted. Every wait is on a state (a
printed line, a row count) with a deadline that only bounds a hang.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus

from batchinfer_dagster import db, ledger
from batchinfer_dagster.defs.sensors import STOPPED_BY_TAG
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import (
    TEXTS,
    engine_of,
    local_feature_store,
    open_queue,
    rows,
)
from batchinfer_testing.foreground import (
    Output,
    ctrl_c,
    kill_processes_with,
    private_network_available,
    tails,
)
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools import run
from batchinfer_tools.run import LOG_NAME
from tests.services import unavailable

# Bounds on a hung start, step, stop and drain (seconds), not measurements: on a quiet machine
# the whole test takes a few minutes; CI runs it at load 16, beside an image build. Their sum
# stays under the test's own timeout, so a hang fails with what was printed and the log's
# tail, and the stop still runs.
START_DEADLINE_S = 900
STEP_DEADLINE_S = 300
STOP_DEADLINE_S = run.STOP_TIMEOUT_S + 60
DRAIN_DEADLINE_S = 900
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(
        START_DEADLINE_S + STEP_DEADLINE_S + DRAIN_DEADLINE_S + 2 * STOP_DEADLINE_S + 120
    ),
]

# What a make running these tests (`make test`) passes down: without them the `make` under
# test prints what a user's does, not "make[1]: Entering directory" lines.
NESTED_MAKE = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
READY = "batchinfer is ready after"
STEP_STARTED = "STEP_START"
STOPPING = "stopping Dagster, then the model server"
STOPPED = "stopped"
BACKLOG = 3000
INTERRUPTED_LINE = re.compile(
    r"^run (?P<run>[0-9a-f]{8}) \(batch (?P<batch>\S+)\) interrupted by the stop; its batch is "
    r"retried at the next start, at no cost to its attempts$"
)


def start_make_run(home: Path) -> tuple[subprocess.Popen, Output]:
    env = {**os.environ, "BATCHINFER_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    for name in NESTED_MAKE:
        env.pop(name, None)
    process = subprocess.Popen(
        ["unshare", "-n", "bash", "-c", "ip link set lo up && exec make run"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, Output(process)


def diagnosis(output: Output, home: Path) -> str:
    """Every line printed, and the tail of make run's log (its children's output)."""
    return f"{output.text()}\n{tails([home / 'logs' / LOG_NAME])}"


def stop(process: subprocess.Popen, output: Output, home: Path) -> tuple[list[str], list[str]]:
    """Ctrl-C; the lines printed after it, and what was left running (killed now, so a failed
    stop leaves nothing under the tests that follow)."""
    interrupted_from = len(output.lines)
    try:
        ended = ctrl_c(process, output, STOP_DEADLINE_S)
    finally:
        left = kill_processes_with(f"BATCHINFER_HOME={home}")
    assert ended, diagnosis(output, home)
    return output.lines[interrupted_from:], left


def predicted(settings: Settings) -> int:
    with engine_of(settings).connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(db.predictions)).scalar()


def test_ctrl_c_with_a_run_in_flight_prints_one_line_per_run(tmp_path: Path) -> None:
    if not private_network_available():
        unavailable("unshare -n (a private network namespace) is not permitted here")
    home = tmp_path / "home"
    settings = Settings(home=home)
    process, output = start_make_run(home)
    try:
        started = output.until(READY, time.monotonic() + START_DEADLINE_S)
        assert started, diagnosis(output, home)
        local_feature_store(settings).upsert(
            [(i, f"{TEXTS[i % len(TEXTS)]} (ticket {i})") for i in range(1, BACKLOG + 1)]
        )
        queue = open_queue(settings)
        try:
            queue.publish([json.dumps({"id": str(i)}).encode() for i in range(1, BACKLOG + 1)])
        finally:
            queue.close()
        stepped = output.until(STEP_STARTED, time.monotonic() + STEP_DEADLINE_S)
        assert stepped, diagnosis(output, home)
    finally:
        after, left = stop(process, output, home)
    text = "\n".join(after)
    assert left == [], text
    assert "Traceback" not in text, text
    assert "Stack Trace" not in text, text  # how Dagster's event log prints an error's stack
    # From make run's "stopping" line on, the terminal gets its own lines only (children's
    # lines printed before it may still come first: they raced the signal).
    stopping = next(i for i, line in enumerate(after) if line.startswith(STOPPING))
    own = after[stopping + 1 : -1]
    assert [line for line in own if not INTERRUPTED_LINE.match(line)] == [], text
    assert after[-1] == STOPPED, text

    # One line per run the stop interrupted, and those are exactly the runs it ended.
    matches = [INTERRUPTED_LINE.match(line) for line in after if "interrupted" in line]
    lines = [match for match in matches if match]
    assert lines, text
    assert len(lines) == len(matches), text
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = [
            dagster_run
            for dagster_run in instance.get_runs()
            if dagster_run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
        ]
    ended = {r.run_id[:8]: r.tags.get("dagster/partition") for r in runs}
    assert {line["run"]: line["batch"] for line in lines} == ended, text
    # Each tagged by the stop: what makes their retry cost no attempt.
    assert {r.run_id[:8]: r.tags.get(STOPPED_BY_TAG) for r in runs} == dict.fromkeys(
        ended, run.STOPPED_BY
    )
    # The tracebacks are kept, in the log file the stop names.
    log = home / "logs" / LOG_NAME
    assert f"(their output: {log})" in text, text
    assert "DagsterExecutionInterruptedError" in log.read_text(errors="replace")

    # Nothing lost: the next start retries the interrupted batches until all is predicted.
    process, output = start_make_run(home)
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    try:
        while predicted(settings) < BACKLOG and time.monotonic() < deadline:
            assert process.poll() is None, diagnosis(output, home)
            output.until("\0never printed", time.monotonic() + 5)
        assert predicted(settings) == BACKLOG, diagnosis(output, home)
    finally:
        after, left = stop(process, output, home)
    assert left == [], "\n".join(after)
    assert "Traceback" not in "\n".join(after), "\n".join(after)
    assert "Stack Trace" not in "\n".join(after), "\n".join(after)
    # And at no cost: each interrupted batch's attempt was not charged, so every batch has
    # spent exactly one charged attempt, the one that settled it.
    batches = {row.batch_key: row for row in rows(settings, db.prediction_batches)}
    interrupted = set(ended.values())
    uncharged = {key: row.uncharged_attempts for key, row in batches.items() if key in interrupted}
    assert uncharged == dict.fromkeys(interrupted, 1)
    charged = {key: row.attempts - row.uncharged_attempts for key, row in batches.items()}
    assert charged == dict.fromkeys(batches, 1)
    assert {row.status for row in batches.values()} == {ledger.BatchStatus.SUCCEEDED}
