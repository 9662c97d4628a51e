"""The production path on one machine: a real ``dagster-daemon`` launching runs out of process.

PostgreSQL holds the app database and Dagster's own storage (two databases of one server), the
queue is the Pub/Sub emulator, and the Dagster instance is ``dagster.local.yaml`` with its
storage moved to PostgreSQL (``batchinfer_tools.stack.dagster_config``): DefaultRunLauncher
(each run a subprocess), QueuedRunCoordinator, the ``model_server`` pool limit of 2. The daemon
loads the code location from ``workspace.yaml`` and runs the real sensor, as in production;
nothing is executed in the caller's process.

``read_drain`` then reads what happened back from the instance itself: the sensor's tick
records, the runs, and each run's start-up from its event log (launch → ``RUN_START`` → the
first text sent to the model, which the ``predictions`` materialization records).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)

# Not exported at the top level in Dagster 1.13; the instance's scheduling API takes it.
from dagster._core.definitions.run_request import InstigatorType

from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import ledger_settled
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_testing.processes import stop_process_group
from batchinfer_testing.services import PostgresServer
from batchinfer_tools.stack import dagster_config

BIN = Path(sys.executable).parent
PREDICTIONS_JOB = "predictions_job"


@dataclass(frozen=True)
class LauncherPath:
    """One deployment of the launcher path: its settings, and the environment of its processes
    (the CLI, the daemon and, through the daemon, every run worker)."""

    settings: Settings
    env: dict[str, str]
    dagster_home: Path
    # The checkout whose workspace.yaml (and so whose code) the daemon loads.
    code_dir: Path = REPO_ROOT

    def cli(self, *args: str) -> str:
        """``batchinfer ARGS`` in this deployment; its stdout. Raises with stderr on failure."""
        result = subprocess.run(
            [str(BIN / "batchinfer"), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"batchinfer {' '.join(args)} failed: {result.stderr[-2000:]}")
        return result.stdout

    def instance(self) -> DagsterInstance:
        """The deployment's Dagster instance (its PostgreSQL storage); the caller disposes it."""
        return DagsterInstance.from_config(str(self.dagster_home))


def launcher_path(
    postgres: PostgresServer,
    emulator_host: str,
    home: Path,
    *,
    name: str = "batchinfer",
    code_dir: Path | None = None,
    run_monitoring: dict[str, int] | None = None,
    **overrides: object,
) -> LauncherPath:
    """Databases ``{name}`` (app) and ``{name}_dagster`` created, the instance's ``dagster.yaml``
    written under ``home``; then ``batchinfer db upgrade`` and ``batchinfer pubsub create`` (topics
    named after ``name``), as a deployment does.

    ``code_dir``: the CLI, the daemon and its runs import ``batchinfer_dagster`` from there (a
    checkout of another commit with its ``workspace.yaml`` and ``dagster.local.yaml``, for a
    before/after comparison) rather than from this one.
    ``run_monitoring``: keys of the instance's ``run_monitoring`` replaced for this deployment
    (shorter bounds than ``dagster.local.yaml``'s, so a test waits minutes, not an hour).
    ``overrides`` are ``Settings`` fields (``model_url``, ``batch_size``, …); they reach every
    process as ``BATCHINFER_*`` variables, so the daemon's runs see what the caller sees.
    """
    app_url = postgres.create_database(name)
    postgres.create_database(f"{name}_dagster")
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    code = code_dir or REPO_ROOT
    config = dagster_config(postgres.port, f"{name}_dagster", code / "dagster.local.yaml")
    config["run_monitoring"] = {**config.get("run_monitoring", {}), **(run_monitoring or {})}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    fields: dict[str, object] = {
        "home": home,
        "database_url": app_url,
        "queue": "pubsub",
        "pubsub_topic": f"{name}-requests",
        "pubsub_subscription": f"{name}-requests-sub",
        "pubsub_dead_letter_topic": f"{name}-dead-letter",
        "pubsub_dead_letter_subscription": f"{name}-dead-letter-sub",
        **overrides,
    }
    env = {
        **os.environ,
        **{f"BATCHINFER_{key.upper()}": str(value) for key, value in fields.items()},
        "DAGSTER_HOME": str(dagster_home),
        "PUBSUB_EMULATOR_HOST": emulator_host,
        "HF_HUB_OFFLINE": "1",
        **({"PYTHONPATH": str(code_dir)} if code_dir else {}),
    }
    settings = Settings(**fields).model_copy(
        update={"dagster_home": dagster_home, "pubsub_emulator_host": emulator_host}
    )
    path = LauncherPath(settings=settings, env=env, dagster_home=dagster_home, code_dir=code)
    path.cli("db", "upgrade")
    path.cli("pubsub", "create")
    return path


@dataclass(frozen=True)
class ProcessSample:
    """One process as /proc shows it now."""

    parent: int
    rss_kib: int
    # User + system CPU time so far, seconds.
    cpu_s: float
    command: str


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_samples(within: Iterable[int]) -> dict[int, ProcessSample]:
    """The processes of ``within``'s trees alive now, by pid (from /proc); processes that
    vanish while being read are left out."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            stats[int(entry.name)] = (
                int(fields[1]),
                (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
            )
    parents = {pid: parent for pid, (parent, _) in stats.items()}
    pids = set().union(*(descendants(parents, root) for root in within))
    samples: dict[int, ProcessSample] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            rss = 0
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            samples[pid] = ProcessSample(
                parent=stats[pid][0],
                rss_kib=rss,
                cpu_s=stats[pid][1],
                command=command.decode(errors="replace"),
            )
    return samples


def descendants(parents: dict[int, int], root: int) -> set[int]:
    """``root`` and every descendant of it, from each process's parent pid."""
    tree = {root}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree & set(parents)


# What a process of the launcher path is, from its command line; the first match names it.
COMPONENTS = (
    ("model server", "model_server"),
    # The code server starts each run in a spawned ``multiprocessing`` process.
    ("run workers", "spawn_main"),
    ("code server", " api grpc"),
    ("daemon", "dagster-daemon"),
    ("PostgreSQL", "postgres"),
    ("Pub/Sub emulator", "pubsub"),
)


def component(command: str) -> str:
    """The launcher path's component a command line belongs to ("other" if none)."""
    for name, needle in COMPONENTS:
        if needle in command:
            return name
    return "other"


@dataclass
class CpuLedger:
    """CPU seconds the processes of some trees used from ``start()`` on, by component.

    Sampled: a process that ends between two samples loses what it used since the last one
    (at most one sampling interval of it).
    """

    roots: tuple[int, ...]
    before: dict[int, float] = field(default_factory=dict)
    # Each process's CPU seconds and command line at its last sample.
    last: dict[int, float] = field(default_factory=dict)
    commands: dict[int, str] = field(default_factory=dict)

    def start(self) -> None:
        self.before = {pid: s.cpu_s for pid, s in process_samples(self.roots).items()}

    def sample(self) -> dict[int, ProcessSample]:
        """Sample the trees now; the samples, for the caller's other uses of the same read."""
        samples = process_samples(self.roots)
        for pid, s in samples.items():
            # An exited process not yet reaped (a zombie) has no command line: keep the last.
            self.commands[pid] = s.command or self.commands.get(pid, "")
            self.last[pid] = s.cpu_s
        return samples

    def used(self) -> dict[int, float]:
        """CPU seconds each process used from ``start()`` to its last sample, by pid."""
        return {pid: cpu - self.before.get(pid, 0.0) for pid, cpu in self.last.items()}

    def top(self, n: int = 8) -> list[tuple[float, str]]:
        """The ``n`` processes that used the most CPU seconds, with their command lines."""
        used = [(round(cpu, 1), self.commands[pid][:120]) for pid, cpu in self.used().items()]
        return sorted(used, reverse=True)[:n]

    def by_component(self) -> dict[str, float]:
        by_name: dict[str, float] = {}
        for pid, cpu in self.used().items():
            name = component(self.commands[pid])
            by_name[name] = by_name.get(name, 0.0) + cpu
        return dict(sorted(by_name.items(), key=lambda item: -item[1]))


@dataclass
class DaemonWatch:
    """What was seen of the daemon's process tree while it drained (sampled from /proc)."""

    seconds: float = 0.0
    peak_tree_rss_kib: int = 0
    peak_process_rss_kib: int = 0
    peak_processes: int = 0
    # CPU seconds by component over the drain, the caller's whole process tree.
    cpu_s: dict[str, float] = field(default_factory=dict)
    top_processes: list[tuple[float, str]] = field(default_factory=list)


@contextlib.contextmanager
def running_daemon(path: LauncherPath, log: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` on the deployment's instance, stopped (whole group) at the end."""
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(path.code_dir / "workspace.yaml")],
            cwd=path.code_dir,
            env=path.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield daemon
        finally:
            stop_process_group(daemon)


def drain(
    path: LauncherPath,
    expect: int,
    log: Path,
    *,
    timeout: float,
    poll_seconds: float = 1.0,
    cpu_roots: tuple[int, ...] = (),
) -> DaemonWatch:
    """Start the daemon, wait until ``expect`` requests are settled (ledger) and every run has
    ended (a run reports its end after it settled its batch), then stop the daemon.

    CPU is counted for the caller's process tree and the trees of ``cpu_roots`` (servers that
    left it, such as a daemonized PostgreSQL).
    Raises ``TimeoutError`` (naming the daemon's log) when they are not settled in ``timeout``
    seconds, and ``RuntimeError`` when the daemon exits on its own.
    """
    watch = DaemonWatch()
    cpu = CpuLedger((os.getpid(), *cpu_roots))
    cpu.start()
    started = time.perf_counter()
    with running_daemon(path, log) as daemon, path.instance() as instance:
        while not (ledger_settled(path.settings, expect) and not unfinished_runs(instance)):
            if daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}; see {log}")
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{expect} requests not settled after {timeout} s; see {log}")
            # One read of /proc serves both: the daemon is a child of this process.
            samples = cpu.sample()
            parents = {pid: sample.parent for pid, sample in samples.items()}
            tree = [samples[pid].rss_kib for pid in descendants(parents, daemon.pid)]
            watch.peak_tree_rss_kib = max(watch.peak_tree_rss_kib, sum(tree))
            watch.peak_process_rss_kib = max(watch.peak_process_rss_kib, *tree, 0)
            watch.peak_processes = max(watch.peak_processes, len(tree))
            time.sleep(poll_seconds)
        watch.seconds = time.perf_counter() - started
        cpu.sample()
    watch.cpu_s = cpu.by_component()
    watch.top_processes = cpu.top()
    return watch


def load_numbered_records(path: LauncherPath, directory: Path, count: int) -> None:
    """Records 1..``count`` ("message number 0" …) stored by ``load`` and imported into the
    feature store by ``import-data``, through the CLI as a user would."""
    records = directory / "records.jsonl"
    records.write_text("".join(f'{{"text": "message number {i}"}}\n' for i in range(count)))
    path.cli("load", str(records))
    path.cli("import-data")


def runs_in_step(instance: DagsterInstance, job_name: str | None = None) -> set[str]:
    """Ids of the started runs (of ``job_name``, or of any job) whose step has started: each
    holds a ``model_server`` pool slot while its step runs."""
    started = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    return {
        record.dagster_run.run_id
        for record in started
        if job_name in (None, record.dagster_run.job_name)
        and instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.STEP_START)
    }


def unfinished_runs(instance: DagsterInstance) -> int:
    """Runs of any job not yet ended (queued, starting, started, canceling)."""
    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    statuses = [status for status in DagsterRunStatus if status not in finished]
    return len(instance.get_run_records(RunsFilter(statuses=statuses)))


@dataclass(frozen=True)
class RunTimes:
    """One run's timeline in Unix seconds, from its event log."""

    run_id: str
    status: DagsterRunStatus
    created: float
    launched: float | None
    started: float | None
    step_started: float | None
    model_started: float | None
    finished: float | None
    # The process that reported RUN_START: the run worker.
    worker_pid: int | None = None
    # How long the run's batch took at the model (``model_latency_s``), seconds.
    model_seconds: float | None = None

    @property
    def model_ended(self) -> float | None:
        if self.model_started is None or self.model_seconds is None:
            return None
        return self.model_started + self.model_seconds

    @property
    def start_up_s(self) -> float | None:
        """Launch → first text sent to the model: what a run costs before it does its work."""
        if self.launched is None or self.model_started is None:
            return None
        return self.model_started - self.launched


@dataclass
class DrainRecord:
    """The instance's own record of a drain: sensor ticks, runs, partitions."""

    ticks: int = 0
    longest_tick_s: float = 0.0
    runs: list[RunTimes] = field(default_factory=list)
    partitions: int = 0

    def sending_seconds(self) -> float:
        """Seconds in which at least one run was sending its batch to the model (the union of
        the runs' model phases); the rest of a drain the model server had nothing to do."""
        spans = sorted(
            (run.model_started, run.model_ended)
            for run in self.runs
            if run.model_started is not None and run.model_ended is not None
        )
        total, end = 0.0, float("-inf")
        for start, stop in spans:
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total

    @property
    def failed_runs(self) -> int:
        return sum(run.status != DagsterRunStatus.SUCCESS for run in self.runs)

    def median(self, attribute: str) -> float:
        """Median over the runs of ``attribute`` minus ``launched`` (or a property's value)."""
        values = [v for v in (self.span(run, attribute) for run in self.runs) if v is not None]
        return statistics.median(values) if values else float("nan")

    def longest(self, attribute: str) -> float:
        values = [v for v in (self.span(run, attribute) for run in self.runs) if v is not None]
        return max(values) if values else float("nan")

    @staticmethod
    def span(run: RunTimes, attribute: str) -> float | None:
        if attribute == "queued":
            return None if run.launched is None else run.launched - run.created
        value = getattr(run, attribute)
        if attribute == "start_up_s" or value is None or run.launched is None:
            return value
        return value - run.launched


_RUN_EVENTS = {
    DagsterEventType.RUN_STARTING,
    DagsterEventType.RUN_START,
    DagsterEventType.STEP_START,
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.RUN_SUCCESS,
    DagsterEventType.RUN_FAILURE,
}


def run_times(instance: DagsterInstance, run_id: str, status: DagsterRunStatus, created: float):
    events: dict[DagsterEventType, float] = {}
    model_started = None
    model_seconds = None
    worker_pid = None
    for entry in instance.all_logs(run_id, of_type=_RUN_EVENTS):
        event = entry.dagster_event
        if event is None:
            continue
        events.setdefault(event.event_type, entry.timestamp)
        if event.event_type == DagsterEventType.RUN_START:
            worker_pid = event.pid
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            metadata = event.step_materialization_data.materialization.metadata
            if "model_started_at" in metadata:
                model_started = float(metadata["model_started_at"].value)
            if "model_latency_s" in metadata:
                model_seconds = float(metadata["model_latency_s"].value)
    finished = events.get(DagsterEventType.RUN_SUCCESS, events.get(DagsterEventType.RUN_FAILURE))
    return RunTimes(
        run_id=run_id,
        status=status,
        created=created,
        launched=events.get(DagsterEventType.RUN_STARTING),
        started=events.get(DagsterEventType.RUN_START),
        step_started=events.get(DagsterEventType.STEP_START),
        model_started=model_started,
        finished=finished,
        worker_pid=worker_pid,
        model_seconds=model_seconds,
    )


def read_drain(instance: DagsterInstance) -> DrainRecord:
    """Ticks of every sensor, ``predictions_job`` runs with their timelines, partitions."""
    record = DrainRecord()
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id):
            record.ticks += 1
            if tick.end_timestamp is not None:
                record.longest_tick_s = max(
                    record.longest_tick_s, tick.end_timestamp - tick.timestamp
                )
    for run in instance.get_run_records(RunsFilter(job_name=PREDICTIONS_JOB)):
        record.runs.append(
            run_times(
                instance,
                run.dagster_run.run_id,
                run.dagster_run.status,
                run.create_timestamp.timestamp(),
            )
        )
    record.partitions = len(instance.get_dynamic_partitions(PREDICTION_BATCHES))
    return record
