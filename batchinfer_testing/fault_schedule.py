"""Seeded fault schedules: a drain on the launcher path with its parts killed and restarted.

The launcher path (``batchinfer_testing.launcher_path``: a real ``dagster-daemon``, PostgreSQL,
the Pub/Sub emulator and our model server) drains ``requests`` published requests while a
schedule drawn from ``seed`` SIGKILLs the daemon (with its process group: its code server and
run workers), the run workers alive and the model server, and restarts PostgreSQL and the
emulator. Each part killed is started again, as a supervisor would. The drain is then waited
for (on the ledger's state, with a generous bound that only stops a drain that would never
end) and checked against the one invariant of ``batchinfer_testing.invariants``: every
request predicted exactly once or dead-lettered with a reason, nothing stuck, nothing left on
the queue.

When a fault fires is drawn as a point of progress, not a clock time: fault ``i`` fires once
that fraction of the requests is predicted. On a loaded 2-core machine a clock time would land
before the first run or after the last one depending on the load; a progress point lands inside
the drain whatever the load, and the same seed gives the same schedule.

The Pub/Sub emulator keeps its messages in memory (real Pub/Sub keeps them durably), so a
restart of the emulator would lose what is still on the topic: a loss of the emulator, not of
ours. The schedule therefore publishes half of the requests first, restarts the emulator only
once the ledger holds every request published so far, recreates the topics and subscriptions
(``batchinfer pubsub create``, as a deployment does) and publishes the other half after it, so
the sensor's and the runs' clients meet the emulator going away and coming back mid-drain.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_testing.daemon import ledger_settled
from batchinfer_testing.deployment import engine_of
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.launcher_path import (
    BIN,
    LauncherPath,
    component,
    launcher_path,
    process_samples,
    unfinished_runs,
)
from batchinfer_testing.model_server import ModelServer
from batchinfer_testing.processes import free_port, stop_process_group
from batchinfer_testing.services import PostgresServer, ServiceUnavailableError, wait_for_port

DAEMON = "daemon"
RUN_WORKER = "run worker"
MODEL_SERVER = "model server"
POSTGRES = "PostgreSQL"
EMULATOR = "emulator"
FAULT_KINDS = (DAEMON, RUN_WORKER, MODEL_SERVER, POSTGRES, EMULATOR)

# Progress points are drawn inside this share of the predicted requests: past 5 % a run is
# under way, and before 90 % there is still work left for the fault to disturb.
FIRST_POINT = 0.05
LAST_POINT = 0.90
# The emulator's restart comes before the second half is published (see the module docstring).
LAST_EMULATOR_POINT = 0.45
# How long the harness waits for a run worker to exist before it gives that kill up (the drain
# may have no run at that moment); a bound on waiting, not a measurement.
RUN_WORKER_WAIT_S = 120.0
POLL_S = 0.5
# Run monitoring's bounds in the drains' instance. A daemon killed with its process group (a
# supervisor's restart, a container's exit) takes its code server and run workers along; the
# local run launcher has no worker health check, so only these bounds fail the runs it left
# STARTED or STARTING (``dagster.local.yaml`` has an hour and 3 minutes). A healthy run here
# takes seconds to about 40 s on a loaded 2-core machine: one past 90 s is failed and its batch
# given a new run by the ledger's reconcile, which costs time, never a request.
ORPHANED_RUN_BOUNDS = {"max_runtime_seconds": 90, "start_timeout_seconds": 90}


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule: ``kind`` fires once ``at`` (0–1) of the requests is predicted."""

    kind: str
    at: float


def draw_schedule(seed: int, kinds: tuple[str, ...] = FAULT_KINDS) -> list[Fault]:
    """One fault of each kind at a progress point drawn from ``seed``, in firing order.

    The same seed always gives the same schedule (``random.Random(seed)``, draws in ``kinds``
    order).
    """
    rng = random.Random(seed)
    faults = [
        Fault(
            kind, rng.uniform(FIRST_POINT, LAST_EMULATOR_POINT if kind == EMULATOR else LAST_POINT)
        )
        for kind in kinds
    ]
    return sorted(faults, key=lambda fault: fault.at)


class RestartableEmulator:
    """The Pub/Sub emulator on a fixed port, killable with SIGKILL and started again there.

    ``batchinfer_testing.services.pubsub_emulator`` starts one for a whole session; this one
    keeps its port across restarts so the deployment's ``PUBSUB_EMULATOR_HOST`` stays right.
    """

    def __init__(self, project: str = "local-project") -> None:
        if not shutil.which("gcloud") or not shutil.which("java"):
            raise ServiceUnavailableError("the Pub/Sub emulator (gcloud, java) is not on PATH")
        self.project = project
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="batchinfer-pubsub-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with (self.data_dir / "emulator.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "gcloud",
                    "beta",
                    "emulators",
                    "pubsub",
                    "start",
                    f"--project={self.project}",
                    f"--host-port={self.host}",
                    f"--data-dir={self.data_dir}",
                    "--quiet",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout=180, process=self.process)

    def kill(self) -> None:
        """SIGKILL the emulator's process group (gcloud and the Java server under it)."""
        if self.process is not None:
            stop_process_group(self.process, signal.SIGKILL, timeout=15)
            self.process = None

    def close(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout=15)
            self.process = None
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def restartable_emulator() -> Iterator[RestartableEmulator]:
    emulator = RestartableEmulator()
    try:
        emulator.start()
        yield emulator
    finally:
        emulator.close()


@dataclass
class ScheduleResult:
    """One seed's drain: what was injected and what the ledger holds afterwards.

    ``lost``: valid requests neither predicted nor dead-lettered; ``stuck``: request rows and
    batches not in a final status; ``violation``: the invariant's message, "" when it held.
    """

    seed: int
    schedule: list[Fault]
    injected: list[str] = field(default_factory=list)
    published: int = 0
    predicted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    lost: int = 0
    stuck: int = 0
    daemon_exits: int = 0
    minutes: float = 0.0
    violation: str = ""

    @property
    def ok(self) -> bool:
        return not self.violation


class _Daemon:
    """``dagster-daemon run`` on the deployment, killable and started again (log appended).

    Every daemon started is remembered, so ``close`` stops each one's process group (a daemon
    that exited on its own may leave its code server and run workers behind).
    """

    def __init__(self, path: LauncherPath, log: Path) -> None:
        self.path = path
        self.log = log
        self.started: list[subprocess.Popen] = []

    @property
    def current(self) -> subprocess.Popen:
        return self.started[-1]

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.started.append(
                subprocess.Popen(
                    [
                        str(BIN / "dagster-daemon"),
                        "run",
                        "-w",
                        str(self.path.code_dir / "workspace.yaml"),
                    ],
                    cwd=self.path.code_dir,
                    env=self.path.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def kill(self) -> None:
        """SIGKILL the daemon's whole process group (daemon, code server, run workers), as a
        supervisor's restart or a container's exit does; run monitoring fails the runs it left
        (``ORPHANED_RUN_BOUNDS``) and reconcile gives their batches new runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.current.pid, signal.SIGKILL)
        self.current.wait()

    def run_workers(self) -> list[int]:
        return [
            pid
            for pid, sample in process_samples([self.current.pid]).items()
            if component(sample.command) == "run workers"
        ]

    def close(self) -> None:
        for process in self.started:
            stop_process_group(process, timeout=15)


def _predicted(path: LauncherPath) -> int:
    with engine_of(path.settings).connect() as connection:
        return connection.execute(
            sa.select(sa.func.count(sa.distinct(db.predictions.c.record_id)))
        ).scalar_one()


def _in_ledger(path: LauncherPath) -> int:
    with engine_of(path.settings).connect() as connection:
        return connection.execute(
            sa.select(sa.func.count(sa.distinct(db.prediction_requests.c.record_id)))
        ).scalar_one()


def _retrying(read: Callable[[], int]) -> int | None:
    """``read()``, or None while the database is away (PostgreSQL restarting)."""
    try:
        return read()
    except sa.exc.OperationalError:
        db.dispose_engines()
        return None


def _count(path: LauncherPath, result: ScheduleResult, published: Published) -> None:
    """Fill the result's counts from the ledger (read whether or not the invariant held)."""
    with engine_of(path.settings).connect() as connection:
        predicted = dict(
            connection.execute(
                sa.select(db.predictions.c.record_id, sa.func.count()).group_by(
                    db.predictions.c.record_id
                )
            ).all()
        )
        dead = set(connection.execute(sa.select(db.dead_letters.c.payload)).scalars())
        result.dead_lettered = len(dead)
        final = [ledger.RequestStatus.DONE, ledger.RequestStatus.DEAD_LETTERED]
        stuck_requests = connection.execute(
            sa.select(sa.func.count()).where(db.prediction_requests.c.status.not_in(final))
        ).scalar_one()
        stuck_batches = connection.execute(
            sa.select(sa.func.count()).where(
                db.prediction_batches.c.status.not_in(
                    [ledger.BatchStatus.SUCCEEDED, ledger.BatchStatus.DEAD_LETTERED]
                )
            )
        ).scalar_one()
        dead_ids = set(
            connection.execute(
                sa.select(db.prediction_requests.c.record_id).where(
                    db.prediction_requests.c.status == ledger.RequestStatus.DEAD_LETTERED
                )
            ).scalars()
        )
    result.published = published.messages
    result.predicted = len(predicted)
    result.duplicates = sum(n - 1 for n in predicted.values())
    result.lost = len(set(published.valid) - set(predicted) - dead_ids)
    result.stuck = stuck_requests + stuck_batches


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the block, then put back what was there."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Drain:
    """One seed's drain in progress: the deployment, its daemon, and the waits on its state."""

    def __init__(
        self,
        result: ScheduleResult,
        path: LauncherPath,
        parts: tuple[PostgresServer, RestartableEmulator, ModelServer],
        requests: int,
        batch_size: int,
        deadline: float,
    ) -> None:
        self.result = result
        self.batch_size = batch_size
        self.path = path
        self.postgres, self.emulator, self.model_server = parts
        self.requests = requests
        self.half = requests // 2
        self.deadline = deadline
        self.daemon = _Daemon(path, path.settings.home / "daemon.log")
        self.second_half_published = False

    def keep_daemon_alive(self) -> None:
        """Start the daemon again if it exited on its own (counted), as a supervisor would."""
        if self.daemon.current.poll() is not None:
            self.result.daemon_exits += 1
            self.daemon.start()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` (the ledger's state) until it holds; TimeoutError past the bound."""
        while not condition():
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"seed {self.result.seed}: {what} not reached in time")
            self.keep_daemon_alive()
            time.sleep(POLL_S)

    def reached(self, count: Callable[[LauncherPath], int], target: int) -> Callable[[], bool]:
        return lambda: (_retrying(lambda: count(self.path)) or 0) >= target

    def publish_second_half(self) -> None:
        if not self.second_half_published:
            self.path.cli("publish", "--range", f"{self.half + 1}-{self.requests}")
            self.second_half_published = True

    def kill_run_workers(self) -> bool:
        """SIGKILL every run worker alive, waiting a bounded while for one; False if none."""
        waited = time.monotonic() + RUN_WORKER_WAIT_S
        while not (workers := self.daemon.run_workers()) and time.monotonic() < waited:
            self.keep_daemon_alive()
            time.sleep(0.1)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return bool(workers)

    def restart_emulator(self) -> None:
        """Once the first half is in the ledger: kill, start, recreate topics, publish the rest."""
        self.wait_for(self.reached(_in_ledger, self.half), "the first half in the ledger")
        self.emulator.kill()
        self.emulator.start()
        self.path.cli("pubsub", "create")
        self.publish_second_half()

    def inject(self, fault: Fault) -> bool:
        """Fire ``fault`` once its share of the requests is predicted; False if it could not be."""
        # At least one batch left to predict when it fires: a target inside the last batch would
        # wait for the drain's end, when there is no run worker to kill.
        target = max(1, min(round(fault.at * self.requests), self.requests - self.batch_size))
        self.wait_for(self.reached(_predicted, target), f"{fault.kind} at {target} predicted")
        if fault.kind == DAEMON:
            self.daemon.kill()
            self.daemon.start()
        elif fault.kind == RUN_WORKER:
            if not self.kill_run_workers():
                return False
        elif fault.kind == MODEL_SERVER:
            self.model_server.kill()
            self.model_server.start(wait=False)
        elif fault.kind == POSTGRES:
            self.postgres.restart()
        elif fault.kind == EMULATOR:
            self.restart_emulator()
        self.result.injected.append(f"{fault.kind}@{target}")
        return True

    def run(self, published: Published) -> None:
        self.path.cli("publish", "--range", f"1-{self.half}")
        self.daemon.start()
        for fault in self.result.schedule:
            self.inject(fault)
        self.publish_second_half()
        self.model_server.wait_healthy()
        with self.path.instance() as instance:
            self.wait_for(
                lambda: bool(
                    _retrying(lambda: int(ledger_settled(self.path.settings, self.requests)))
                    and not unfinished_runs(instance)
                ),
                "every request settled and every run ended",
            )
        # The invariants' queue check opens the deployment's queue in this process, and the
        # Pub/Sub client finds the emulator through the environment only.
        with _environment(PUBSUB_EMULATOR_HOST=self.emulator.host):
            assert_invariants(
                self.path.settings, published, f"fault schedule, seed {self.result.seed}"
            )


def run_schedule(
    seed: int,
    requests: int,
    postgres: PostgresServer,
    emulator: RestartableEmulator,
    model_server: ModelServer,
    home: Path,
    *,
    timeout_s: float = 1800.0,
    batch_size: int = 8,
    code_dir: Path | None = None,
) -> ScheduleResult:
    """Drain ``requests`` requests under ``seed``'s schedule; the result, invariant included.

    ``timeout_s`` bounds the whole drain (faults and recovery): it only stops a drain that would
    never end, and a drain stopped by it is reported with what it left lost or stuck.
    The deployment gets databases and topics named after the seed, so seeds can share servers.
    ``code_dir``: a checkout (another commit, or one broken on purpose) whose code and
    ``dagster.local.yaml`` the CLI, the daemon and its runs use instead of this one's.
    """
    result = ScheduleResult(seed=seed, schedule=draw_schedule(seed))
    home.mkdir(parents=True, exist_ok=True)
    path = launcher_path(
        postgres,
        emulator.host,
        home,
        name=f"faults{seed}",
        code_dir=code_dir,
        model_url=model_server.url,
        batch_size=batch_size,
        batch_max_wait_seconds=0,
        feature_wait_seconds=0,
        run_monitoring=ORPHANED_RUN_BOUNDS,
        # Every fault may cost a batch an attempt; the bound on attempts is not what is tested.
        max_attempts=20,
    )
    records = home / "records.jsonl"
    records.write_text(
        "".join(f'{{"text": "fault schedule {seed} text {i}"}}\n' for i in range(requests))
    )
    path.cli("load", str(records))
    path.cli("import-data")
    published = Published(valid=list(range(1, requests + 1)))
    started = time.monotonic()
    drain = _Drain(
        result, path, (postgres, emulator, model_server), requests, batch_size, started + timeout_s
    )
    try:
        drain.run(published)
    except (AssertionError, TimeoutError) as error:
        result.violation = str(error).splitlines()[0][:300]
    except Exception as error:  # noqa: BLE001 - the harness failing is reported, not hidden
        where = traceback.extract_tb(error.__traceback__)[-1]
        result.violation = (
            f"harness error: {type(error).__name__}: {str(error)[:200]} "
            f"({Path(where.filename).name}:{where.lineno})"
        ).replace("\n", " ")
    finally:
        drain.daemon.close()
        result.minutes = (time.monotonic() - started) / 60
        with contextlib.suppress(Exception):
            _count(path, result, published)
        db.dispose_engines()
    return result
