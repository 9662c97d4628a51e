"""A new user's first hour: publish → readable on `make run` defaults, and how fast the CLI starts.

Both arms run in one invocation on one machine: *before* is the code of ``--baseline`` (by
default 3509ab4, the commit issue #24 measured), extracted with ``git archive`` and put first on
``PYTHONPATH`` (code server and runs inherit it); *after* is this working tree. Each arm:

- ``dg dev -w workspace.yaml`` with ``dagster.local.yaml`` as its instance and every batchinfer
  setting at its embedded default (batch size 4096, 15 s max wait, 5,000 per pull), against one
  model server (``python -m model_server``, shared by both arms, as `make run` starts it);
- one warm-up request, then ``--samples`` single requests, each published at a random moment
  (0-5 s after the previous one is readable) and timed until its prediction row exists (what
  ``batchinfer prediction ID`` reads): p50 and p95;
- ``--drain`` requests published at once, timed until all are predicted: requests/s;
- per run, its timeline (``first_hour_timeline``): when its batch closed, its run was created,
  its step started, its model time and when its predictions were upserted, in seconds after
  the publish, so the write-up can say where the time goes.

Then ``batchinfer --version``, ``status`` and ``prediction 1`` of each arm, alternately,
``--cli-repeats`` times: medians. ``/proc/loadavg`` is recorded beside each figure.

``--ready-only`` measures the CPU model server's launch → ready instead (`ready_report`).

Ports: run it in a network namespace of its own so `dg dev`'s port 3000 collides with nothing:

    unshare -n bash -c 'ip link set lo up; python -m bench.bench_first_hour [--write-docs]'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from batchinfer_testing.model_server import REPO_ROOT, ModelServer
from batchinfer_testing.processes import stop_process_group
from bench.first_hour_timeline import (
    STAGE_HEADINGS,
    Publish,
    Timeline,
    markdown_rows,
    median_timeline,
    run_timelines,
)
from bench.report import write_section

BIN = Path(sys.executable).parent
BASELINE = "3509ab4"
# A bound on the model server's start, not a measurement: its warm-up on a 2-core machine
# shared with other work took minutes.
MODEL_START_TIMEOUT_S = 1200
HEADING = "## First hour: publish → readable on `make run` defaults"


def load_average() -> str:
    """``/proc/loadavg``'s 1, 5 and 15 minute figures."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def baseline_tree(revision: str, into: Path, repository: Path) -> Path:
    """``repository`` at ``revision``, as files under ``into``."""
    archive = subprocess.run(
        ["git", "archive", revision], cwd=repository, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def python_path(tree: Path) -> str:
    """``PYTHONPATH`` that makes ``tree``'s three distributions win over the editable installs."""
    return os.pathsep.join(str(tree / part) for part in ("", "protocol", "model-server"))


@dataclass
class Arm:
    """One side of the comparison: its code, its latencies and its drain."""

    name: str
    tree: Path
    latencies: list[float]
    latency_load: str = ""
    drains: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    """(seconds, load average) of each drain sample."""
    single_timelines: list[Timeline] = dataclasses.field(default_factory=list)
    drain_timelines: list[list[Timeline]] = dataclasses.field(default_factory=list)
    """Each drain sample's runs, in the order of ``drains``."""

    @property
    def drain_seconds(self) -> float:
        return statistics.median(seconds for seconds, _ in self.drains)

    @property
    def median_drain_timelines(self) -> list[Timeline]:
        """The runs of the drain sample whose time is the median (the lower one of two)."""
        ordered = sorted(range(len(self.drains)), key=lambda i: self.drains[i][0])
        return self.drain_timelines[ordered[(len(ordered) - 1) // 2]]

    @property
    def drain_load(self) -> str:
        return "; ".join(f"{seconds:.0f} s @ {load}" for seconds, load in self.drains)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


ARM_SCRIPT = Path(__file__).with_name("first_hour_arm.py")


def arm_environment(tree: Path, home: Path, model_url: str) -> dict[str, str]:
    """The environment of ``tree``'s processes: its code first, the arm's home and model."""
    return {
        **os.environ,
        "PYTHONPATH": python_path(tree),
        "BATCHINFER_HOME": str(home),
        "BATCHINFER_MODEL_URL": model_url,
    }


def run_arm_script(tree: Path, home: Path, model_url: str, command: str, *counts: int) -> str:
    """``first_hour_arm.py COMMAND HOME MODEL_URL COUNTS…`` under ``tree``'s code: the database
    steps in the arm's own schema. Its stdout; its progress goes to stderr as it runs."""
    return subprocess.run(
        [sys.executable, str(ARM_SCRIPT), command, str(home), model_url, *map(str, counts)],
        env=arm_environment(tree, home, model_url),
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    ).stdout


@contextlib.contextmanager
def dg_dev(tree: Path, home: Path, model_url: str) -> Iterator[None]:
    """`make run`'s Dagster half on ``tree``'s code: ``dg dev`` with the embedded defaults, on
    a database the arm has migrated itself."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(tree / "dagster.local.yaml", dagster_home / "dagster.yaml")
    environment = {**arm_environment(tree, home, model_url), "DAGSTER_HOME": str(dagster_home)}
    with (home / "dg_dev.log").open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "dg"), "dev", "-w", "workspace.yaml"],
            cwd=tree,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield
        finally:
            stop_process_group(process)


def measure_arm(arm: Arm, home: Path, model_url: str, samples: int, drain: int) -> None:
    """On a fresh `dg dev` and home: a warm-up request, ``samples`` single requests, then a
    backlog of ``drain`` (either may be 0); see ``first_hour_arm.py``."""
    home.mkdir(parents=True)
    run_arm_script(arm.tree, home, model_url, "prepare", 1 + samples + drain)
    with dg_dev(arm.tree, home, model_url):
        result = json.loads(
            run_arm_script(arm.tree, home, model_url, "measure", samples, drain).splitlines()[-1]
        )
    arm.latencies += result["latencies"]
    publishes = [Publish(at, range(first, last + 1)) for at, first, last in result["publishes"]]
    timelines = run_timelines(home, publishes)
    for timeline in timelines:
        print(f"  {arm.name} run: {timeline}", flush=True)
    if drain:
        arm.drain_timelines.append(timelines)
    else:
        arm.single_timelines += timelines
    if samples:
        loads = result["latency_loads"]
        arm.latency_load = f"{loads[0]} → {loads[-1]}"
        print(
            f"  {arm.name}: p50 {arm.percentile(0.5):.1f} s, p95 "
            f"{arm.percentile(0.95):.1f} s (load {arm.latency_load})",
            flush=True,
        )
    if drain:
        arm.drains.append((result["drain_seconds"], result["drain_load"]))
        print(
            f"  {arm.name} drain of {drain}: {arm.drains[-1][0]:.1f} s (load {arm.drains[-1][1]})",
            flush=True,
        )


def cli_seconds(tree: Path, home: Path, args: list[str]) -> float:
    environment = {**os.environ, "PYTHONPATH": python_path(tree), "BATCHINFER_HOME": str(home)}
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "batchinfer"), *args], env=environment, capture_output=True, check=False
    )
    return time.perf_counter() - started


def cli_medians(arms: list[Arm], home: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of each command per arm, the arms alternating so load hits both alike."""
    commands = {
        "--version": ["--version"],
        "status": ["status"],
        "prediction 1": ["prediction", "1"],
    }
    times: dict[str, dict[str, list[float]]] = {c: {a.name: [] for a in arms} for c in commands}
    for arm in arms:  # the first call of each migrates the embedded database
        cli_seconds(arm.tree, home / arm.name, ["status"])
    for _ in range(repeats):
        for command, args in commands.items():
            for arm in arms:
                times[command][arm.name].append(cli_seconds(arm.tree, home / arm.name, args))
    return {
        command: {name: statistics.median(values) for name, values in by_arm.items()}
        for command, by_arm in times.items()
    }


def report(
    arms: list[Arm],
    cli: dict[str, dict[str, float]],
    cli_load: str,
    samples: int,
    drain: int,
    baseline_note: str,
) -> str:
    before, after = arms
    rows = [
        f"| publish → readable, p50 of {samples} single requests | {before.percentile(0.5):.1f} s "
        f"| {after.percentile(0.5):.1f} s | {after.percentile(0.5) / before.percentile(0.5):.2f} "
        f"| {before.latency_load} / {after.latency_load} |",
        f"| publish → readable, p95 | {before.percentile(0.95):.1f} s "
        f"| {after.percentile(0.95):.1f} s "
        f"| {after.percentile(0.95) / before.percentile(0.95):.2f} | (same) |",
        f"| drain of {drain:,} requests published at once, median of {len(before.drains)} "
        f"| {drain / before.drain_seconds:.0f}/s "
        f"({before.drain_seconds:.0f} s) | {drain / after.drain_seconds:.0f}/s "
        f"({after.drain_seconds:.0f} s) | {before.drain_seconds / after.drain_seconds:.2f} "
        f"| {before.drain_load} / {after.drain_load} |",
    ]
    rows += [
        f"| `batchinfer {command}`, median | {times[before.name]:.2f} s "
        f"| {times[after.name]:.2f} s | {times[after.name] / times[before.name]:.2f} | {cli_load} |"
        for command, times in cli.items()
    ]
    stages = " | ".join(STAGE_HEADINGS)
    singles = [
        f"| {arm.name} | {arm.percentile(0.5):.1f} | "
        + " | ".join(median_timeline(arm.single_timelines))
        + " |"
        for arm in arms
    ]
    drains = [row for arm in arms for row in markdown_rows(arm.name, arm.median_drain_timelines)]
    return (
        f"{HEADING}\n\n"
        f"`python -m bench.bench_first_hour` on {os.cpu_count()} cores, in one run: *before* is "
        f"{before.tree.name} ({baseline_note}), *after* this tree; `dg dev` with "
        "`dagster.local.yaml` and every setting at its embedded default, one model server "
        "(`python -m model_server`, embedding backend on CPU) for both. Ratios are after / "
        "before for times (below 1 is faster) and after-rate / before-rate for the drain. Load "
        "average (1, 5, 15 min) at the first and last sample, before / after; for the drain, "
        "each sample's seconds @ the load at its end, the arms alternating.\n\n"
        "| measure | before | after | ratio | load average |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n### Where the time goes\n\n"
        "Seconds after the publish (`bench/first_hour_timeline.py`): the batch's runs (more "
        "than one: its first failed, the stages are the last one's), then when the batch closed "
        "in the ledger, Dagster created its run, the predictions step started, the first model "
        "call began, the model's seconds for the batch, the last prediction row upserted. Single "
        f"requests: each stage's median over the {samples}, beside the p50 of publish → "
        "readable (timed from the publish's return, by polling every 50 ms).\n\n"
        f"| arm | readable p50 | {stages} |\n|---|---|"
        + "---|" * len(STAGE_HEADINGS)
        + "\n"
        + "\n".join(singles)
        + f"\n\nThe drain of {drain:,}, one row per run, of the sample with the median drain "
        "time (of three, the middle; of two, the faster).\n\n"
        f"| arm | requests | {stages} |\n|---|---|"
        + "---|" * len(STAGE_HEADINGS)
        + "\n"
        + "\n".join(drains)
        + "\n"
    )


BASELINE_NOTE = "the commit issue #24 measured"
READY_HEADING = "## First hour: the CPU model server's start, launch → ready"


def ready_seconds(warm_up_shapes: str) -> float:
    """Seconds from ``python -m model_server`` (embedding backend, CPU, `make run`'s defaults
    but ``MODEL_WARMUP_SHAPES``) to its first ``/health`` 200."""
    server = ModelServer(MODEL_WARMUP_SHAPES=warm_up_shapes)
    started = time.perf_counter()
    server.start(wait=False)
    try:
        server.wait_healthy(timeout=MODEL_START_TIMEOUT_S)
        return time.perf_counter() - started
    finally:
        server.stop()


def ready_report(repeats: int) -> str:
    """Launch → ready with every shape warmed (the server before this change, still
    ``MODEL_WARMUP_SHAPES=all``) and with the CPU's default (``auto``: the plan's two ends),
    alternately, ``repeats`` times each: medians, with ``/proc/loadavg`` beside each sample."""
    arms = {"all": "every shape (before)", "auto": "auto: the plan's two ends (after)"}
    samples: dict[str, list[tuple[float, str]]] = {arm: [] for arm in arms}
    for _ in range(repeats):
        for arm in arms:
            seconds = ready_seconds(arm)
            samples[arm].append((seconds, load_average()))
            print(f"  MODEL_WARMUP_SHAPES={arm}: {seconds:.1f} s, load {load_average()}")
    medians = {arm: statistics.median(s for s, _ in samples[arm]) for arm in arms}
    rows = [
        f"| {label} | {medians[arm]:.1f} s | "
        + ", ".join(f"{s:.1f} s" for s, _ in samples[arm])
        + f" | {medians[arm] / medians['all']:.2f} | "
        + "; ".join(load for _, load in samples[arm])
        + " |"
        for arm, label in arms.items()
    ]
    return (
        f"{READY_HEADING}\n\n"
        f"`python -m bench.bench_first_hour --ready-only` on {os.cpu_count()} cores: "
        "`python -m model_server` with `make run`'s defaults (embedding backend, "
        "all-MiniLM-L6-v2, CPU) from launch to its first `/health` 200, the two warm-ups "
        f"alternately, {repeats} times each. Ratio: median / the before median. Load average "
        "(1, 5, 15 min) after each sample.\n\n"
        "| warm-up | median | samples | ratio | load average |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the before arm")
    parser.add_argument(
        "--baseline-note", default=BASELINE_NOTE, help="what the before arm is, for the report"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=REPO_ROOT,
        help="the git repository of --baseline (when this tree is an exported snapshot)",
    )
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--drain", type=int, default=5000)
    parser.add_argument(
        "--drain-repeats", type=int, default=3, help="drains per arm, alternating: the median"
    )
    parser.add_argument("--cli-repeats", type=int, default=9)
    parser.add_argument("--cli-only", action="store_true", help="only the CLI start times")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument(
        "--ready-only", action="store_true", help="only the model server's launch → ready"
    )
    parser.add_argument("--ready-repeats", type=int, default=3)
    args = parser.parse_args()
    if args.ready_only:
        markdown = ready_report(args.ready_repeats)
        print(markdown)
        if args.write_docs:
            write_section(READY_HEADING, markdown)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-first-hour-"))
    try:
        arms = [
            Arm(
                f"before-{args.baseline}",
                baseline_tree(args.baseline, work / args.baseline, args.repository),
                [],
            ),
            Arm("after", REPO_ROOT, []),
        ]
        if not args.cli_only:
            server = ModelServer()
            server.start(wait=False)
            try:
                server.wait_healthy(timeout=MODEL_START_TIMEOUT_S)
                # Singles of both arms first, then the drains: each phase compares like with like
                # under the same stretch of the machine's load.
                for arm in arms:
                    measure_arm(arm, work / f"singles-{arm.name}", server.url, args.samples, 0)
                for repeat in range(args.drain_repeats):
                    for arm in arms:
                        home = work / f"drain-{arm.name}-{repeat}"
                        measure_arm(arm, home, server.url, 0, args.drain)
            finally:
                server.stop()
        cli_load_start = load_average()
        cli = cli_medians(arms, work / "cli", args.cli_repeats)
        cli_load = f"{cli_load_start} → {load_average()}"
        for command, times in cli.items():
            print(f"  {command}: " + ", ".join(f"{n} {s:.2f} s" for n, s in times.items()))
        if not args.cli_only:
            markdown = report(arms, cli, cli_load, args.samples, args.drain, args.baseline_note)
            print(markdown)
            if args.write_docs:
                write_section(HEADING, markdown)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
