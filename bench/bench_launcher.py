"""Backlog drained through the daemon's own launcher, against the model server's peak.

The production combination on one machine (``batchinfer_testing.launcher_path``): PostgreSQL for
the app database and Dagster's storage, the Pub/Sub emulator, a real ``dagster-daemon run``
whose sensor launches each ``predictions`` run as a subprocess (DefaultRunLauncher,
QueuedRunCoordinator, ``model_server`` pool limit 2). N records are loaded, imported and
published with the real CLI; the daemon drains them until every request is settled.

The baseline, measured in the same run on the same texts and the same model server: its
standalone peak, sent the way runs send it (as many concurrent clients as the pool lets runs in,
each predicting one batch of ``BATCHINFER_BATCH_SIZE`` texts with the product's own client),
once before and once after the drain; the better round is the peak.

    python -m bench.bench_launcher --requests 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batchinfer_dagster import db
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import TEXTS
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.launcher_path import DrainRecord, drain, launcher_path, read_drain
from batchinfer_testing.model_server import rss_kib, running_model_server, scrape
from batchinfer_testing.services import postgres_server, pubsub_emulator
from bench.report import write_section

SECTION = "## Backlog through the daemon's launcher"
# The `model_server` pool limit of dagster.local.yaml: runs that send to the model at once.
POOL_LIMIT = 2
GOAL = 0.80
# Texts of one standalone round: each client sends several whole chunks, 4 in flight at once.
PEAK_TEXTS = 4096


def cpu_list(text: str) -> frozenset[int]:
    """'0' or '0,1' → the CPU numbers, for ``os.sched_setaffinity``."""
    return frozenset(int(part) for part in text.split(","))


def record_text(i: int) -> str:
    """The i-th record's text: short support messages, distinct (as bench_backlog's)."""
    return " ".join(TEXTS[i % len(TEXTS)].split()[:8]) + f" #{i}"


def standalone_peak(settings: Settings, texts: list[str]) -> float:
    """Texts/s of the model server alone: ``POOL_LIMIT`` concurrent runs' worth of clients.

    Each client is the product's own (``HttpModelServer.open()``), predicting its share of
    ``texts`` in batches of ``settings.batch_size``, as a run predicts its batch.
    """
    resource = resources_for(settings).model_server
    parameters = resource.parameters()
    shares = [texts[i::POOL_LIMIT] for i in range(POOL_LIMIT)]

    def predict(share: list[str]) -> int:
        with resource.open() as client:
            for start in range(0, len(share), settings.batch_size):
                client.predict(share[start : start + settings.batch_size], parameters)
        return len(share)

    started = time.perf_counter()
    with ThreadPoolExecutor(POOL_LIMIT) as pool:
        sent = sum(pool.map(predict, shares))
    return sent / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, help="BATCHINFER_BATCH_SIZE (default: embedded)")
    parser.add_argument("--timeout", type=float, default=3600, help="longest drain, seconds")
    parser.add_argument(
        "--code",
        type=Path,
        help="the daemon and its runs import batchinfer_dagster from this checkout (before/after)",
    )
    parser.add_argument(
        "--label",
        help="a variant's name (e.g. 'before: main at 7a1e27c'): its own section in the report",
    )
    parser.add_argument(
        "--model-cpus",
        type=cpu_list,
        help="CPUs of the model server, e.g. '0' (its own hardware, as in production)",
    )
    parser.add_argument(
        "--pipeline-cpus",
        type=cpu_list,
        help="CPUs of everything else (databases, emulator, daemon, runs, this benchmark)",
    )
    parser.add_argument("--no-report", action="store_true", help="print only (development)")
    args = parser.parse_args()
    if args.pipeline_cpus:
        # Inherited by every process started from here on except the model server.
        os.sched_setaffinity(0, args.pipeline_cpus)
    server_env = {"MODEL_TORCH_THREADS": str(len(args.model_cpus))} if args.model_cpus else {}
    home = Path(tempfile.mkdtemp(prefix="bench-launcher-"))
    records = home / "records.jsonl"
    texts = [record_text(i) for i in range(args.requests)]
    records.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    load_start = os.getloadavg()[0]
    overrides: dict[str, object] = {"feature_wait_seconds": 0}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    with (
        postgres_server() as postgres,
        pubsub_emulator() as emulator,
        running_model_server(cpus=args.model_cpus, **server_env) as server,
    ):
        # The Google client library finds the emulator here (the invariants' last pull).
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        path = launcher_path(
            postgres, emulator.host, home, model_url=server.url, code_dir=args.code, **overrides
        )
        settings = path.settings
        steps = {}
        for name, command in (
            ("load", ("load", str(records))),
            ("import-data", ("import-data",)),
            ("publish", ("publish", "--range", f"1-{args.requests}")),
        ):
            started = time.perf_counter()
            path.cli(*command)
            steps[name] = round(time.perf_counter() - started, 1)
            print(name, steps[name], "s", flush=True)
        peak_texts = texts[: min(len(texts), PEAK_TEXTS)]
        peaks = [standalone_peak(settings, peak_texts)]
        print("standalone peak before", round(peaks[0], 1), flush=True)
        busy_before = scrape(server.url, "model_server_batch_seconds_sum")
        watch = drain(
            path,
            args.requests,
            home / "daemon.log",
            timeout=args.timeout,
            cpu_roots=(postgres.postmaster_pid,),
        )
        busy = scrape(server.url, "model_server_batch_seconds_sum") - busy_before
        print("drained in", round(watch.seconds, 1), "s", flush=True)
        # The same share while the server runs at its peak, for comparison.
        peak_busy = scrape(server.url, "model_server_batch_seconds_sum")
        peak_started = time.perf_counter()
        peaks.append(standalone_peak(settings, peak_texts))
        peak_busy = (scrape(server.url, "model_server_batch_seconds_sum") - peak_busy) / (
            time.perf_counter() - peak_started
        )
        print("standalone peak after", round(peaks[1], 1), flush=True)
        model_rss = rss_kib(server.pid)
        with path.instance() as instance:
            record = read_drain(instance)
        counts = assert_invariants(
            settings, Published(valid=list(range(1, args.requests + 1))), "launcher drain"
        )
        db.dispose_engines()
    result = summary(args.requests, settings, steps, peaks, watch.seconds, record)
    result.update(
        {
            "daemon_tree_peak_rss_mib": watch.peak_tree_rss_kib // 1024,
            "largest_process_peak_rss_mib": watch.peak_process_rss_kib // 1024,
            "daemon_tree_peak_processes": watch.peak_processes,
            "model_busy_s": round(busy, 1),
            "model_busy_share": round(busy / watch.seconds, 3),
            "model_busy_share_at_peak": round(peak_busy, 3),
            "cpu_s_by_component": {name: round(s, 1) for name, s in watch.cpu_s.items()},
            "cpu_s_top_processes": watch.top_processes,
            "model_server_rss_mib_at_end": model_rss // 1024,
            "predicted": counts.predicted,
            "lost": counts.lost,
            "duplicates": counts.duplicates,
            "load_average": [round(load_start, 1), round(os.getloadavg()[0], 1)],
            "model_cpus": sorted(args.model_cpus or ()),
            "pipeline_cpus": sorted(args.pipeline_cpus or ()),
        }
    )
    print(json.dumps(result, indent=2))
    result["label"] = args.label
    result["command"] = shlex.join(["python", "-m", "bench.bench_launcher", *sys.argv[1:]])
    if not args.no_report:
        section = f"{SECTION}: {args.label}" if args.label else SECTION
        write_section(section, launcher_section(section, result))


def summary(
    requests: int,
    settings: Settings,
    steps: dict[str, float],
    peaks: list[float],
    drain_s: float,
    record: DrainRecord,
) -> dict[str, object]:
    """The drain's figures: rate against the peak, runs, ticks, start-up (medians, maxima)."""
    peak = max(peaks)
    rate = requests / drain_s
    first_launch = min(run.launched for run in record.runs if run.launched is not None)
    last_end = max(run.finished for run in record.runs if run.finished is not None)
    model_busy = [
        run.finished - run.model_started
        for run in record.runs
        if run.model_started is not None and run.finished is not None
    ]
    return {
        "requests": requests,
        "batch_size": settings.batch_size,
        "cli_s": steps,
        "standalone_peak_texts_per_s": [round(p, 1) for p in peaks],
        "drain_s": round(drain_s, 1),
        "drain_requests_per_s": round(rate, 1),
        "drain_vs_peak": round(rate / peak, 3),
        "first_launch_to_last_run_end_s": round(last_end - first_launch, 1),
        "runs": len(record.runs),
        "failed_runs": record.failed_runs,
        "partitions": record.partitions,
        "ticks": record.ticks,
        "longest_tick_s": round(record.longest_tick_s, 2),
        "queued_s_median": round(record.median("queued"), 2),
        "launch_to_started_s_median": round(record.median("started"), 2),
        "launch_to_started_s_max": round(record.longest("started"), 2),
        "launch_to_step_s_median": round(record.median("step_started"), 2),
        "launch_to_model_s_median": round(record.median("start_up_s"), 2),
        "launch_to_model_s_max": round(record.longest("start_up_s"), 2),
        "model_to_run_end_s_median": round(statistics.median(model_busy or [float("nan")]), 2),
        "model_phase_s_median": round(
            statistics.median(
                [r.model_seconds for r in record.runs if r.model_seconds is not None]
                or [float("nan")]
            ),
            2,
        ),
        "no_run_sending_s": round(drain_s - record.sending_seconds(), 1),
    }


def launcher_section(section: str, result: dict[str, object]) -> str:
    """The section: the issue's figures for the launcher path, with the same-run baseline."""
    peaks = result["standalone_peak_texts_per_s"]
    cli = result["cli_s"]
    rows = [
        ("requests (loaded, imported, published with the CLI)", f"{result['requests']:,}"),
        (
            "load / import-data / publish",
            f"{cli['load']} s / {cli['import-data']} s / {cli['publish']} s",
        ),
        ("batch size (`BATCHINFER_BATCH_SIZE`)", f"{result['batch_size']:,}"),
        ("model server alone, before / after the drain", f"{peaks[0]} / {peaks[1]} texts/s"),
        (
            "**drain (daemon start → every request settled)**",
            f"**{result['drain_s']} s, {result['drain_requests_per_s']} requests/s**",
        ),
        (
            "**drain vs the model server's peak**",
            f"**{result['drain_vs_peak']:.1%}** (goal ≥ {GOAL:.0%})",
        ),
        ("first run launched → last run ended", f"{result['first_launch_to_last_run_end_s']} s"),
        (
            "runs (failed) / partitions",
            f"{result['runs']} ({result['failed_runs']}) / {result['partitions']}",
        ),
        (
            "sensor ticks / longest tick (the instance's tick records)",
            f"{result['ticks']} / {result['longest_tick_s']} s",
        ),
        ("run created → launched (queued for the pool), median", f"{result['queued_s_median']} s"),
        (
            "run start-up: launched → `RUN_START`, median / max",
            f"{result['launch_to_started_s_median']} s / {result['launch_to_started_s_max']} s",
        ),
        ("run start-up: launched → `STEP_START`, median", f"{result['launch_to_step_s_median']} s"),
        (
            "run start-up: launched → first text sent to the model, median / max",
            f"{result['launch_to_model_s_median']} s / {result['launch_to_model_s_max']} s",
        ),
        ("first text sent → run ended, median", f"{result['model_to_run_end_s_median']} s"),
        (
            "a run's batch at the model (`model_latency_s`), median",
            f"{result['model_phase_s_median']} s",
        ),
        (
            "no run sending to the model (drain less the union of the runs' model phases)",
            f"{result['no_run_sending_s']} s",
        ),
        (
            "the model computing batches (`model_server_batch_seconds`), share of the drain",
            f"{result['model_busy_s']} s, {result['model_busy_share']:.1%} "
            f"(while alone at its peak: {result['model_busy_share_at_peak']:.1%})",
        ),
        (
            "CPU seconds over the drain, by component",
            ", ".join(f"{name} {cpu}" for name, cpu in result["cpu_s_by_component"].items()),
        ),
        (
            "peak RSS: daemon's process tree (daemon, code server, run workers) / largest process",
            f"{result['daemon_tree_peak_rss_mib']} MiB / "
            f"{result['largest_process_peak_rss_mib']} MiB",
        ),
        ("most processes in the daemon's tree at once", str(result["daemon_tree_peak_processes"])),
        ("model server RSS at the end", f"{result['model_server_rss_mib_at_end']} MiB"),
        (
            "predicted / duplicates / lost (`batchinfer_testing.invariants`)",
            f"{result['predicted']:,} / {result['duplicates']} / {result['lost']}",
        ),
    ]
    load = result["load_average"]
    if result["model_cpus"]:
        placement = (
            f"The model server is a real `python -m model_server` process (embedding backend) "
            f"alone on CPU {','.join(map(str, result['model_cpus']))} "
            f"(`MODEL_TORCH_THREADS={len(result['model_cpus'])}`), everything else on CPU "
            f"{','.join(map(str, result['pipeline_cpus']))} (`os.sched_setaffinity`), as "
            "production gives the model server a machine of its own. "
        )
    else:
        placement = (
            "The model server is a real `python -m model_server` process "
            "(embedding backend, CPU) on the same cores. "
        )
    lines = [
        section,
        "",
        f"`{result['command']}` on "
        f"{os.cpu_count()} shared cores (1-minute load average {load[0]} at the start, "
        f"{load[1]} at the end). PostgreSQL (app database and Dagster's storage), the Pub/Sub "
        "emulator, a real `dagster-daemon run` process: the sensor launches each `predictions` "
        "run as a subprocess (DefaultRunLauncher, QueuedRunCoordinator, `model_server` pool "
        f"limit {POOL_LIMIT}). " + placement + "Its peak is measured in the same run on "
        f"the same texts, sent as {POOL_LIMIT} runs send them ({POOL_LIMIT} concurrent clients, "
        "each predicting whole batches with the product's client); the better round counts.",
        "",
        "| measure | result |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "How to read it: the drain counts from the daemon's start, so it includes the first "
        "tick and the last, smaller batch's closing wait. A run's start-up is read from its "
        "event log: launch (`RUN_STARTING`), `RUN_START` in the worker, `STEP_START`, and the "
        "`model_started_at` the `predictions` materialization records; where runs wait at the "
        "pool inside the worker (a run buffer), that wait is part of launch → first text. "
        + (
            "Other developers' jobs were not pinned and ran on both cores: "
            if result["model_cpus"]
            else "The model server shares the cores with everything else, other developers' "
            "jobs included: "
        )
        + "the two standalone rounds show how much the machine's load moved during the run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
