"""``make run``'s processes: the model server and ``dg dev``, started and stopped in order.

Each child runs in a session of its own, so a terminal's Ctrl-C reaches only this process. A
whole-group SIGINT used to reach every Dagster process at once: Python processes that the daemon
or a code server was just starting died in ``site`` with ``Fatal Python error:
init_import_site``, and each run worker printed its ``DagsterExecutionInterruptedError`` with a
full stack. Here Ctrl-C (or SIGTERM) stops things in the order a shutdown needs:

1. ``dg dev`` (SIGINT to that one process): it tells its daemon and webserver to stop, so no
   run is launched any more; its code server waits for the runs it started;
2. the runs still in flight, each tagged ``batchinfer/stopped_by`` and then canceled through
   the instance's run launcher (the code server interrupts each run worker, which records its
   run as canceled: the sensor gives the batch another attempt on the next start, and the tag
   makes it one that costs the batch nothing); SIGINT, then SIGKILL, to what is left of the
   group;
3. the model server, which the run workers used until then.

Everything the children print goes to ``<home>/logs/make-run.log``; until the stop it is also
echoed to the terminal. From the stop on the terminal gets only this process's lines: the log
file's name, then one line per run that was in flight, read from the Dagster instance once
everything has stopped. Tracebacks of the stop stay in the log file.

    python -m batchinfer_tools.run   # what `make run` runs, with DAGSTER_HOME exported
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from dagster import DagsterInstance, RunsFilter

from batchinfer_testing.model_server import REPO_ROOT

BIN = Path(sys.executable).parent
LOG_NAME = "make-run.log"
# Bounds on each step of the stop (seconds), not expected durations: `dg dev` itself waits up
# to 60 s for its webserver and daemon; a run worker stops at its step's next interrupt check.
DAGSTER_STOP_TIMEOUT_S = 90.0
RUN_WORKERS_STOP_TIMEOUT_S = 60.0
MODEL_SERVER_STOP_TIMEOUT_S = 30.0
# The longest a stop can take, its last step's SIGKILL included: `make stack` waits this long
# before it stops the servers that Dagster uses.
STOP_TIMEOUT_S = (
    DAGSTER_STOP_TIMEOUT_S + 2 * RUN_WORKERS_STOP_TIMEOUT_S + MODEL_SERVER_STOP_TIMEOUT_S
)
POLL_S = 0.2
PARTITION_TAG = "dagster/partition"
# Hosts of the URLs whose ports a start checks are free (``already_answering``).
LOCAL_HOSTS = ("127.0.0.1", "localhost")
# The value of the tag each run in flight gets from the stop (``tag_runs_in_flight``).
STOPPED_BY = "make run"
T = TypeVar("T")


class Relay:
    """Copies children's output, line by line, to the log file and, until ``quiet``, to the
    terminal. One lock keeps lines of different children whole."""

    def __init__(self, log: IO[bytes], terminal: IO[bytes]) -> None:
        self.log = log
        self.terminal = terminal
        self.lock = threading.Lock()
        self.echo = True
        self.threads: list[threading.Thread] = []

    def follow(self, stream: IO[bytes]) -> None:
        """Copy ``stream`` until it ends, in a thread of its own."""
        thread = threading.Thread(target=self._copy, args=(stream,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _copy(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            with self.lock:
                self._write(line, terminal=self.echo)

    def child_line(self, line: str) -> None:
        """A line as a child's: in the log, and on the terminal until ``quiet``."""
        with self.lock:
            self._write(line.encode() + b"\n", terminal=self.echo)

    def say(self, line: str) -> None:
        """A line of this process's own, on the terminal and in the log."""
        with self.lock:
            self._write(line.encode() + b"\n", terminal=True)

    def _write(self, data: bytes, *, terminal: bool) -> None:
        self.log.write(data)
        self.log.flush()
        if terminal:
            self.terminal.write(data)
            self.terminal.flush()

    def quiet(self) -> None:
        """From now on children's lines go to the log file only."""
        with self.lock:
            self.echo = False

    def drain(self, timeout: float) -> None:
        """Wait until every followed stream ended (all writers exited), at most ``timeout``."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def start(
    command: Sequence[str], relay: Relay, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``command`` in a session of its own, its stdout and stderr into ``relay``; ``env``
    added to this process's environment."""
    process = subprocess.Popen(
        list(command),
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    relay.follow(process.stdout)
    return process


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is left (zombies of ours are reaped by ``wait``)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group(pgid: int, timeout: float) -> bool:
    """Wait until group ``pgid`` is empty; whether it is."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_group(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """``sig`` to the group of ``process`` (its own session); SIGKILL what is left at
    ``timeout``; then reap ``process``."""
    signal_group(process.pid, sig)
    if not wait_group_reaping(process, timeout):
        signal_group(process.pid, signal.SIGKILL)
        process.wait()


def wait_group_reaping(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """``wait_group`` for a group led by our child: the leader is reaped as it exits, else
    it would stay a zombie and keep the group alive."""
    deadline = time.monotonic() + timeout
    while True:
        process.poll()
        if not group_alive(process.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def stop_dagster(dagster: subprocess.Popen[bytes], relay: Relay) -> list[str]:
    """Steps 1 and 2 of the module's order; the ids of the runs that were in flight.

    ``dg dev`` alone first: its daemon stops, so nothing launches a run any more, while its code
    server waits for the runs it started. Those are then canceled through the instance's run
    launcher (Dagster's own termination: the code server interrupts the run worker, which
    records the run as canceled); a run worker still there after ``RUN_WORKERS_STOP_TIMEOUT_S``
    gets SIGINT, and SIGKILL after as long again.
    """
    before = _read_instance(tag_runs_in_flight, [], relay)
    relay.child_line(f"{_now()} stopping dg dev")
    if dagster.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(dagster.pid, signal.SIGINT)
        try:
            dagster.wait(timeout=DAGSTER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            dagster.kill()
            dagster.wait()
    canceled = _read_instance(lambda: cancel_runs_in_flight(relay), [], relay)
    if not wait_group_reaping(dagster, RUN_WORKERS_STOP_TIMEOUT_S):
        stop_group(dagster, signal.SIGINT, RUN_WORKERS_STOP_TIMEOUT_S)
    return list(dict.fromkeys([*before, *canceled]))


@dataclass(frozen=True)
class InterruptedRun:
    """A run that was in flight when ``make run`` stopped, and what the instance says now."""

    run_id: str
    partition: str | None
    status: str

    def line(self) -> str:
        """The one line the terminal gets for this run."""
        batch = f"batch {self.partition}" if self.partition else "no batch"
        if self.status in ("FAILURE", "CANCELED"):
            outcome = "its batch is retried at the next start, at no cost to its attempts"
        else:
            outcome = (
                f"left {self.status.lower()}; run monitoring fails it on the next start and "
                "its batch is retried, at no cost to its attempts"
            )
        return f"run {self.run_id[:8]} ({batch}) interrupted by the stop; {outcome}"


def tag_runs_in_flight() -> list[str]:
    """Tag the instance's started (or starting) runs as stopped by ``make run``; their ids.

    Done before anything is stopped, so a run the stop ends any way (canceled, failed as its
    code server went, killed by the last SIGINT) carries the tag: the sensor's reconcile then
    retries its batch without charging the attempt (``STOPPED_BY_TAG``). The instance is the
    one of ``DAGSTER_HOME``.
    """
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        return tag_in_flight(instance)


def tag_in_flight(instance: DagsterInstance) -> list[str]:
    """``tag_runs_in_flight`` on ``instance``."""
    from batchinfer_dagster.defs.sensors import STOPPED_BY_TAG

    run_ids = [run.run_id for run in instance.get_runs(_in_flight())]
    for run_id in run_ids:
        instance.add_run_tags(run_id, {STOPPED_BY_TAG: STOPPED_BY})
    return run_ids


def cancel_runs_in_flight(relay: Relay) -> list[str]:
    """Cancel each started (or starting) run through the instance's run launcher, tagged first
    as ``tag_runs_in_flight`` tags (one the daemon launched since then has no tag yet); their
    ids.

    A run that cannot be canceled (its code server gone) gets a line in the log and is left to
    the SIGINT that follows.
    """
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        run_ids = tag_in_flight(instance)
        for run_id in run_ids:
            try:
                canceled = instance.run_launcher.terminate(run_id)
            except Exception as error:  # noqa: BLE001 - charged to this run; the stop goes on
                relay.child_line(f"{_now()} could not cancel run {run_id}: {error!r}")
            else:
                relay.child_line(f"{_now()} canceling run {run_id}: requested {canceled}")
        return run_ids


def _now() -> str:
    """A time stamp for the log's own lines, as Dagster writes them (UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def _in_flight() -> RunsFilter:
    from dagster import DagsterRunStatus, RunsFilter

    return RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])


def interrupted_runs(run_ids: Iterable[str]) -> list[InterruptedRun]:
    """What the instance says now of each of ``run_ids``."""
    from dagster import DagsterInstance

    result = []
    with DagsterInstance.get() as instance:
        for run_id in run_ids:
            run = instance.get_run_by_id(run_id)
            if run is None:
                continue
            result.append(InterruptedRun(run_id, run.tags.get(PARTITION_TAG), run.status.value))
    return result


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread while inside."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def readiness_thread(relay: Relay) -> threading.Thread:
    """``batchinfer_tools.readiness``'s one line, watched in the background."""
    from batchinfer_tools import readiness

    thread = threading.Thread(target=readiness.main, args=(relay.child_line,), daemon=True)
    thread.start()
    return thread


def already_answering(urls: Iterable[str]) -> str | None:
    """The first ``host:port`` of ``urls`` (http or https on this machine) where something
    already accepts connections, else None.

    A second ``make run`` beside a running one would otherwise start anyway: its servers fail to
    bind while its readiness line sees the first one's answer and says "ready".
    """
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with contextlib.suppress(OSError), socket.create_connection((parts.hostname, port), 1):
            return f"{parts.hostname}:{port}"
    return None


def log_path() -> Path:
    """``<home>/logs/make-run.log``; the previous start's log is kept as ``.previous``."""
    from batchinfer_dagster.settings import load_settings

    logs = load_settings().home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / LOG_NAME
    if path.exists():
        path.replace(path.with_suffix(".previous.log"))
    return path


def main() -> int:
    """Start the model server and ``dg dev``; on Ctrl-C or SIGTERM stop them in order.

    Returns 0 after a stop by signal (a clean stop is what the user asked for: make then says
    nothing more), otherwise the exit status of whichever child ended first (``make run`` ends
    when either does); 1 at once, with nothing started and the log left as it is, when the UI's
    or the model server's port already answers (``already_answering``).
    """
    from batchinfer_dagster.settings import load_settings
    from batchinfer_tools.readiness import UI_URL

    taken = already_answering([UI_URL, load_settings().model_url])
    if taken is not None:
        print(
            f"make run: {taken} already answers: another make run (or another server) is "
            "running; stop it first (Ctrl-C in its terminal). Nothing was started.",
            file=sys.stderr,
            flush=True,
        )
        return 1
    path = log_path()
    # Dagster's temporary files (its code servers' sockets, `dg dev`'s workspace) go into a
    # folder of this start's own, removed at the end: a code server that the stop had to kill
    # would otherwise leave its socket in the user's TMPDIR.
    with (
        path.open("wb") as log,
        stop_signals(),
        tempfile.TemporaryDirectory(prefix="batchinfer-run-", ignore_cleanup_errors=True) as tmp,
    ):
        relay = Relay(log, sys.stdout.buffer)
        relay.say(f"make run: everything below is also in {path}")
        model_server = start([str(BIN / "python"), "-m", "model_server"], relay)
        dagster = start(
            [str(BIN / "dg"), "dev", "-w", "workspace.yaml"], relay, env={"TMPDIR": tmp}
        )
        readiness_thread(relay)
        status = 0
        try:
            while model_server.poll() is None and dagster.poll() is None:
                time.sleep(POLL_S)
            status = dagster.returncode or model_server.returncode or 0
        except KeyboardInterrupt:
            pass
        # The stop: further signals are not a reason to skip a step (each is bounded).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        relay.quiet()
        relay.say(f"stopping Dagster, then the model server (their output: {path})")
        in_flight = stop_dagster(dagster, relay)
        stop_group(model_server, signal.SIGINT, MODEL_SERVER_STOP_TIMEOUT_S)
        relay.drain(timeout=5)
        for run in _read_instance(lambda: interrupted_runs(in_flight), [], relay):
            relay.say(run.line())
        relay.say("stopped")
        return status


def _read_instance(read: Callable[[], T], default: T, relay: Relay) -> T:
    """``read()``; an instance that cannot be read (its storage gone) gives ``default`` and one
    line that says why, never a traceback on the terminal during a stop."""
    try:
        return read()
    except Exception as error:  # noqa: BLE001 - any storage error: the stop goes on
        relay.say(f"could not read the Dagster instance's runs: {error!r}")
        return default


if __name__ == "__main__":
    sys.exit(main())
