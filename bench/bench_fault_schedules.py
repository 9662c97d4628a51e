"""Randomized fault schedules (issue 26): N seeds, each a drain with every part killed once.

Each seed drains ``--requests`` requests on the launcher path (real ``dagster-daemon``,
PostgreSQL, the Pub/Sub emulator, the model server) under the schedule
``batchinfer_testing.fault_schedule.draw_schedule(seed)`` draws: SIGKILL of the daemon, of the
run workers alive and of the model server, restarts of PostgreSQL and of the emulator. It prints
one row per seed (faults injected, published, predicted, dead-lettered, lost, stuck, daemon
exits on its own (restarted by the harness), minutes, ``/proc/loadavg`` at the end) and, with
``--write``, replaces the section between the markers of ``docs/reliability.md`` with the table.

This is a correctness run, not a speed one: minutes are quoted only to size later runs.

    python bench/bench_fault_schedules.py --seeds 1 --requests 200 --write docs/reliability.md
"""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
from pathlib import Path

from batchinfer_testing.fault_schedule import ScheduleResult, restartable_emulator, run_schedule
from batchinfer_testing.model_server import ModelServer
from batchinfer_testing.services import postgres_server

BEGIN = "<!-- fault-schedules:begin -->"
END = "<!-- fault-schedules:end -->"


def load_average() -> str:
    """``/proc/loadavg``'s 1, 5 and 15 minute figures."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(rows: list[tuple[ScheduleResult, str]], requests: int) -> str:
    lines = [
        f"{len(rows)} seeds of {requests} requests each (`bench/bench_fault_schedules.py`).",
        "",
        "| seed | faults injected (kind@predicted) | published | predicted | dead-lettered "
        "| lost | stuck | daemon exits | minutes | load | invariant |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result, load in rows:
        verdict = "holds" if result.ok else f"**violated**: {result.violation}"
        lines.append(
            f"| {result.seed} | {', '.join(result.injected)} | {result.published} "
            f"| {result.predicted} | {result.dead_lettered} | {result.lost} | {result.stuck} "
            f"| {result.daemon_exits} | {result.minutes:.1f} | {load} "
            f"| {verdict.replace('|', '/')} |"
        )
    return "\n".join(lines)


def write_section(document: Path, text: str) -> None:
    """Replace what lies between the markers (appended with its heading the first time)."""
    content = document.read_text()
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in content:
        content = re.sub(
            re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, content, flags=re.S
        )
    else:
        content = content.rstrip("\n") + f"\n\n## Randomized fault schedules\n\n{section}\n"
    document.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per seed, seconds")
    parser.add_argument(
        "--code-dir", type=Path, help="a checkout whose code the deployment runs instead"
    )
    parser.add_argument("--write", type=Path, help="the document whose section gets the table")
    args = parser.parse_args()
    rows: list[tuple[ScheduleResult, str]] = []
    with (
        postgres_server() as postgres,
        restartable_emulator() as emulator,
        tempfile.TemporaryDirectory(prefix="bench-faults-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        # No warm-up of every shape: on a loaded 2-core machine it alone takes minutes, and
        # the server is restarted inside each schedule.
        server = ModelServer(MODEL_WARMUP="false")
        server.start()
        stack.callback(server.stop)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            result = run_schedule(
                seed,
                args.requests,
                postgres,
                emulator,
                server,
                Path(scratch) / f"seed{seed}",
                timeout_s=args.timeout,
                code_dir=args.code_dir,
            )
            rows.append((result, load_average()))
            print(table(rows[-1:], args.requests).splitlines()[-1], flush=True)
    text = table(rows, args.requests)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
