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
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import TEXTS, engine_of, local_feature_store, open_queue
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools.run import LOG_NAME
from tests.services import unavailable

pytestmark = pytest.mark.slow

# A bound on a hung start, stop or drain, not a measurement.
DEADLINE_SECONDS = 600
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
    r"retried at the next start on the same state$"
)


def private_network_available() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


class Output:
    """The lines a process prints, read as they come."""

    def __init__(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.lines: list[str] = []
        self.pending = b""

    def until(self, marker: str | None, deadline: float) -> bool:
        """Read until a line holds ``marker`` (True), the output ends or the deadline passes.

        ``marker=None`` reads to the end of the output (True once it ended).
        """
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return marker is None
            self.pending += chunk
            *complete, self.pending = self.pending.split(b"\n")
            for raw in complete:
                self.lines.append(raw.decode(errors="replace"))
                if marker is not None and marker in self.lines[-1]:
                    return True
        return False


def start_make_run(home: Path) -> tuple[subprocess.Popen, Output]:
    env = {**os.environ, "BATCHINFER_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    for name in NESTED_MAKE:
        env.pop(name, None)
    process = subprocess.Popen(
        ["unshare", "-n", "bash", "-c", "ip link set lo up && exec make run"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, Output(process)


def ctrl_c(process: subprocess.Popen, output: Output) -> list[str]:
    """SIGINT to the whole foreground group, as a terminal sends it; the lines printed after."""
    interrupted_from = len(output.lines)
    os.killpg(process.pid, signal.SIGINT)
    ended = output.until(None, time.monotonic() + DEADLINE_SECONDS)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert ended, "\n".join(output.lines)
    return output.lines[interrupted_from:]


def processes_of(home: Path) -> list[str]:
    """Command lines of the processes whose environment names ``home`` (make run's children
    inherit ``BATCHINFER_HOME``, whatever session they are in)."""
    marker = f"BATCHINFER_HOME={home}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def predicted(settings: Settings) -> int:
    with engine_of(settings).connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(db.predictions)).scalar()


def test_ctrl_c_with_a_run_in_flight_prints_one_line_per_run(tmp_path: Path) -> None:
    if not private_network_available():
        unavailable("unshare -n (a private network namespace) is not permitted here")
    home = tmp_path / "home"
    settings = Settings(home=home)
    process, output = start_make_run(home)
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        assert output.until(READY, deadline), "\n".join(output.lines)
        local_feature_store(settings).upsert(
            [(i, f"{TEXTS[i % len(TEXTS)]} (ticket {i})") for i in range(1, BACKLOG + 1)]
        )
        queue = open_queue(settings)
        try:
            queue.publish([json.dumps({"id": str(i)}).encode() for i in range(1, BACKLOG + 1)])
        finally:
            queue.close()
        assert output.until(STEP_STARTED, deadline), "\n".join(output.lines)
    finally:
        after = ctrl_c(process, output)
    text = "\n".join(after)
    assert "Traceback" not in text, text
    assert "Stack Trace" not in text, text  # how Dagster's event log prints an error's stack
    # From make run's "stopping" line on, the terminal gets its own lines only (children's
    # lines printed before it may still come first: they raced the signal).
    stopping = next(i for i, line in enumerate(after) if line.startswith(STOPPING))
    own = after[stopping + 1 : -1]
    assert [line for line in own if not INTERRUPTED_LINE.match(line)] == [], text
    assert after[-1] == STOPPED, text
    assert processes_of(home) == [], text

    # One line per run the stop interrupted, and those are exactly the runs it ended.
    matches = [INTERRUPTED_LINE.match(line) for line in after if "interrupted" in line]
    lines = [match for match in matches if match]
    assert lines, text
    assert len(lines) == len(matches), text
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        ended = {
            run.run_id[:8]: run.tags.get("dagster/partition")
            for run in instance.get_runs()
            if run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
        }
    assert {line["run"]: line["batch"] for line in lines} == ended, text
    # The tracebacks are kept, in the log file the stop names.
    log = home / "logs" / LOG_NAME
    assert f"(their output: {log})" in text, text
    assert "DagsterExecutionInterruptedError" in log.read_text(errors="replace")

    # Nothing lost: the next start retries the interrupted batches until all is predicted.
    process, output = start_make_run(home)
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while predicted(settings) < BACKLOG and time.monotonic() < deadline:
            assert process.poll() is None, "\n".join(output.lines)
            output.until("\0never printed", time.monotonic() + 5)
    finally:
        after = ctrl_c(process, output)
    assert predicted(settings) == BACKLOG, "\n".join(output.lines)
    assert "Traceback" not in "\n".join(after), "\n".join(after)
    assert "Stack Trace" not in "\n".join(after), "\n".join(after)
    assert processes_of(home) == []
