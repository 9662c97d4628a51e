"""Backlog benchmark: N requests, loaded and published with the real CLI, drained completely.

Records are loaded with ``batchinfer load`` and published with ``batchinfer publish --range``
(local defaults: SQLite, local queue; or ``--postgres URL`` and/or ``--pubsub`` with
``PUBSUB_EMULATOR_HOST`` set). The daemon's loop then runs in this process: evaluate the real
sensor, execute its new run keys in-process, until every request is settled. The run workers are
in-process too, so their peak memory is this process's; the model server is a real process.

    python -m bench.bench_backlog --requests 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import TEXTS
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.model_server import REPO_ROOT, rss_kib, running_model_server
from bench.report import write_section

SECTION = "## Backlog"


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [str(Path(sys.executable).with_name("batchinfer")), *args],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--postgres", help="app database URL (default: SQLite)")
    parser.add_argument("--pubsub", action="store_true", help="queue on PUBSUB_EMULATOR_HOST")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    records = home / "records.jsonl"
    with records.open("w") as handle:
        for i in range(args.requests):
            text = " ".join(TEXTS[i % len(TEXTS)].split()[:8]) + f" #{i}"
            handle.write(json.dumps({"text": text}) + "\n")
    with running_model_server() as server:
        overrides = {
            "home": str(home),
            "model_url": server.url,
            "feature_wait_seconds": 0,
            "batch_max_wait_seconds": 0,
        }
        if args.postgres:
            overrides["database_url"] = args.postgres
        if args.pubsub:
            overrides["queue"] = "pubsub"
        settings = Settings(**overrides)
        env = {**os.environ, **{f"BATCHINFER_{k.upper()}": str(v) for k, v in overrides.items()}}
        if args.pubsub:
            cli(env, "pubsub", "create")
        started = time.perf_counter()
        loaded = json.loads(cli(env, "load", str(records)))
        cli(env, "import-data")
        cli(env, "publish", "--range", f"{loaded['first_id']}-{loaded['last_id']}")
        published_s = time.perf_counter() - started
        rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        with DagsterInstance.ephemeral() as instance:
            report = run_daemon_loop(instance, settings, expect=args.requests, max_seconds=4 * 3600)
            drain_s = time.perf_counter() - started
            partitions = len(instance.get_dynamic_partitions(PREDICTION_BATCHES))
        model_rss = rss_kib(server.pid)
        ids = list(range(loaded["first_id"], loaded["last_id"] + 1))
        counts = assert_invariants(settings, Published(valid=ids), f"backlog {args.requests}")
    db.dispose_engines()
    result = {
        "requests": args.requests,
        "database": "postgresql" if args.postgres else "sqlite",
        "queue": "pubsub" if args.pubsub else "local",
        "load_import_publish_s": round(published_s, 1),
        "drain_s": round(drain_s, 1),
        "requests_per_s": round(args.requests / drain_s, 1),
        "ticks": report.ticks,
        "runs": len(report.runs),
        "failed_runs": report.failed_runs,
        "longest_tick_s": round(report.longest_tick_s, 2),
        "partitions": partitions,
        "loop_and_workers_peak_rss_mib_before_drain": rss_start // 1024,
        "loop_and_workers_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "model_server_rss_mib_at_end": model_rss // 1024,
        "predicted": counts.predicted,
        "duplicates": counts.duplicates,
        "lost": counts.lost,
    }
    print(json.dumps(result, indent=2))
    write_section(SECTION, backlog_section(result))


def backlog_section(result: dict[str, object]) -> str:
    """The "## Backlog" section: what the issue asks to report, as a table."""
    rows = [
        ("requests (loaded, imported, published with the CLI)", f"{result['requests']:,}"),
        ("app database / queue", f"{result['database']} / {result['queue']}"),
        ("load + import + publish", f"{result['load_import_publish_s']} s"),
        ("drain (sensor + runs until every request is settled)", f"{result['drain_s']} s"),
        ("drain rate", f"{result['requests_per_s']} requests/s"),
        ("sensor ticks / longest tick", f"{result['ticks']} / {result['longest_tick_s']} s"),
        ("runs (failed)", f"{result['runs']} ({result['failed_runs']})"),
        ("partitions created", str(result["partitions"])),
        (
            "peak RSS, sensor loop + in-process run workers",
            f"{result['loop_and_workers_peak_rss_mib']} MiB",
        ),
        ("model server RSS at the end", f"{result['model_server_rss_mib_at_end']} MiB"),
        (
            "predicted / duplicates / lost",
            f"{result['predicted']:,} / {result['duplicates']} / {result['lost']}",
        ),
    ]
    lines = [
        SECTION,
        "",
        f"`python -m bench.bench_backlog --requests {result['requests']}` on "
        f"{os.cpu_count()} cores; the model server is a real `python -m model_server` process "
        "(embedding backend, CPU). The daemon's loop runs in the benchmark process and executes "
        "each run request in-process, one batch after another.",
        "",
        "| measure | result |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
