"""How long a one-text request waits while a huge one runs (issue #26, item 7).

The huge request: one text, 64 candidate labels of ~150 KB each (9.6 MB of JSON, under the
10 MiB body limit). Each turn sends it, waits until the server has read it, then sends one-text
requests one after another until it is answered; the figure is the first one-text request's
latency, against the same request's latency on the idle server (the baseline, measured in the
same run and the same process). Labels differ in every turn, so no turn finds them cached.

Two servers take turns, both `python -m model_server` with the embedding backend (the default)
on CPU, without the warm-up: MODEL_MAX_LABEL_CHARS at 10,000,000 (no label is cut: the server
as it was) and at its default (labels cut before any template is formatted).

    HF_HUB_OFFLINE=1 python -m bench.bench_heavy_request [--turns 3]

Writes the "## A huge request beside a small one" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from batchinfer_testing.model_server import ModelServer
from bench.report import write_section
from model_server.settings import ServerSettings

LABELS = 64
LABEL_CHARS = 150_000
WORDS = [
    *("refund", "charge", "invoice", "card", "app", "crash"),
    *("login", "password", "page", "browser", "order", "delivery"),
]
SMALL = {"instances": ["You charged my card twice for one order."]}


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def huge_body(seed: int) -> bytes:
    """64 labels of ~150 KB of words, distinct in each turn (the label cache never helps)."""
    rng = random.Random(seed)
    labels = []
    for index in range(LABELS):
        words: list[str] = [f"turn{seed}-label{index}"]
        size = len(words[0])
        while size < LABEL_CHARS:
            word = rng.choice(WORDS)
            words.append(word)
            size += len(word) + 1
        labels.append(" ".join(words))
    body = {"instances": ["My card was charged twice."], "parameters": {"candidate_labels": labels}}
    return json.dumps(body).encode()


def latency(client: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    response = client.post(f"{url}/predict", json=SMALL)
    response.raise_for_status()
    return time.perf_counter() - started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise LookupError("no VmHWM")


@dataclass
class Turns:
    """One server's figures: per turn, seconds and the load average beside them."""

    alone: list[float] = field(default_factory=list)
    beside: list[float] = field(default_factory=list)
    huge: list[float] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    peak_mib: float = 0.0


def run_turn(server: ModelServer, seed: int, turns: Turns) -> None:
    with httpx.Client(timeout=3600) as client:
        turns.alone.append(min(latency(client, server.url) for _ in range(3)))
        body = huge_body(seed)
        huge: dict[str, float] = {}

        def send_huge() -> None:
            started = time.perf_counter()
            with httpx.Client(timeout=3600) as huge_client:
                response = huge_client.post(
                    f"{server.url}/predict",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            response.raise_for_status()
            huge["seconds"] = time.perf_counter() - started

        thread = threading.Thread(target=send_huge)
        thread.start()
        time.sleep(1.0)  # the body is on the loopback in well under a second
        turns.loads.append(load_average())
        turns.beside.append(latency(client, server.url))
        thread.join()
        turns.huge.append(huge["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    default_chars = ServerSettings.model_fields["model_max_label_chars"].default
    contenders = {
        "labels whole (before)": ModelServer(
            MODEL_WARMUP="false", MODEL_MAX_LABEL_CHARS="10000000"
        ),
        f"labels cut at {default_chars:,} characters (after)": ModelServer(MODEL_WARMUP="false"),
    }
    results = {name: Turns() for name in contenders}
    start_load = load_average()
    for server in contenders.values():
        server.start(wait=False)
    try:
        for server in contenders.values():
            server.wait_healthy(timeout=3600)
        for turn in range(args.turns):
            for index, (name, server) in enumerate(contenders.items()):
                run_turn(server, seed=turn * 10 + index, turns=results[name])
                print(
                    name,
                    "turn",
                    turn,
                    {k: v[-1] for k, v in vars(results[name]).items() if isinstance(v, list)},
                    flush=True,
                )
        for name, server in contenders.items():
            results[name].peak_mib = peak_rss_mib(server.pid)
    finally:
        for server in contenders.values():
            server.stop()
    end_load = load_average()
    rows = []
    for name, turns in results.items():
        alone = statistics.median(turns.alone)
        beside = statistics.median(turns.beside)
        rows.append(
            f"| {name} | {alone * 1000:.0f} ms | {beside:.2f} s | {beside / alone:.0f}× | "
            f"{statistics.median(turns.huge):.2f} s | {turns.peak_mib:.0f} MiB | "
            f"{', '.join(turns.loads)} |"
        )
    markdown = "\n".join(
        [
            "## A huge request beside a small one",
            "",
            f"`python -m bench.bench_heavy_request --turns {args.turns}` on 2 CPU cores: the "
            "embedding backend (all-MiniLM-L6-v2, no warm-up) in a real `python -m model_server`; "
            f"a request of one text and {LABELS} labels of ~{LABEL_CHARS // 1000} KB "
            f"(9.6 MB of JSON), and one-text requests beside it. Medians of {args.turns} turns, "
            "servers taking turns; every turn's labels are new (no cache). 1-minute load average "
            f"{start_load} at the start, {end_load} at the end, and in each turn as it ran.",
            "",
            "| server | one text alone | one text beside the huge request | ratio | huge "
            "request | server peak RSS | load average per turn |",
            "|---|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
        ]
    )
    print(markdown)
    write_section("## A huge request beside a small one", markdown)


if __name__ == "__main__":
    main()
