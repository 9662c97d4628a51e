"""Every way of building and scoring labels that was tried, on every labelled set.

The embedding backend's method (model_server/backends/label_descriptions.py and label_fit.py) was
chosen among these on the development set (bench/data/helpdesk_messages.jsonl) and the default
labels' set, with the travel set's columns hidden (``--hide-travel``); the travel set was
measured once the choice was made. Each alternative is computed here from the same text and
prototype embeddings, so one table compares them all; bench_zero_shot prints it.

Axes of the first grid (``first_grid``), each label's score being the cosine similarity of
the text to it, then adjusted:

* templates: the label's name in ``one`` template, ``five`` (the previous choice), ``ten``
  (the shipped BARE_LABEL_TEMPLATES) or ``bare`` (the name alone);
* build: ``centroid`` (the mean of the parts' centroids: names, descriptions) or ``max``
  (the best of all the label's sentences);
* adjustment against a reference of texts about no label: ``raw`` (none), ``prior`` (less the
  label's mean similarity to the reference, contextual calibration), ``z`` (and divided by
  its standard deviation), ``center`` (the reference's mean vector subtracted from text and
  label), ``center+prior``, ``center+z``; the reference is ``everyday`` (the shipped
  none_of_these.json, 100 texts) or ``content-free`` (CONTENT_FREE, 8 near-empty texts);
* how descriptions weigh against the name (descriptions only, twice the name, half).

The second grid (``second_grid``) adds the descriptions' phrases as a third part (``phrases``)
and compares ways to combine a label's sentences after calibrating each one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model_server.backends.label_descriptions import BARE_LABEL_TEMPLATES, description_phrases

Messages = list[dict[str, str]]
Encode = Callable[[Sequence[str]], np.ndarray]

TEMPLATES: dict[str, tuple[str, ...]] = {
    "one": ("This message is about {}.",),
    # The previous choice: the first five of the shipped templates.
    "five": BARE_LABEL_TEMPLATES[:5],
    "ten": BARE_LABEL_TEMPLATES,
    "bare": ("{}",),
}
CONTENT_FREE = (
    "",
    "N/A",
    "text",
    "message",
    "Hello.",
    "I have a question.",
    "Please help.",
    "Thank you.",
)
ADJUSTMENTS = (
    ("raw", None),
    ("prior", "everyday"),
    ("z", "everyday"),
    ("prior", "content-free"),
    ("z", "content-free"),
    ("center", "everyday"),
    ("center", "content-free"),
    ("center+prior", "everyday"),
    ("center+z", "everyday"),
)


@dataclass(frozen=True)
class LabelledSet:
    """Messages ({"text", "label"}), their labels in order, and one-line descriptions."""

    name: str
    messages: Messages
    labels: tuple[str, ...]
    descriptions: dict[str, tuple[str, ...]]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def phrases(descriptions: Sequence[str]) -> list[str]:
    """The descriptions' phrases, as the embedding backend embeds them."""
    return list(description_phrases(tuple(descriptions)))


class Grid:
    """Accuracy of each alternative; embeddings come from ``encode`` (unit vectors, cached)."""

    def __init__(self, encode: Encode, everyday: Sequence[str]) -> None:
        self.cache: dict[str, np.ndarray] = {}
        self.encode_fn = encode
        self.references = {"everyday": tuple(everyday), "content-free": CONTENT_FREE}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            self.cache.update(zip(missing, self.encode_fn(missing), strict=True))
        return np.stack([self.cache[t] for t in texts])

    def accuracy(
        self, labelled: LabelledSet, scores: Callable[[np.ndarray, str], np.ndarray]
    ) -> float:
        texts = self.encode([m["text"] for m in labelled.messages])
        matrix = np.stack([scores(texts, label) for label in labelled.labels], axis=1)
        truth = np.array([labelled.labels.index(m["label"]) for m in labelled.messages])
        return float((matrix.argmax(axis=1) == truth).mean())

    def first(
        self,
        labelled: LabelledSet,
        described: bool,
        templates: str,
        build: str,
        adjustment: tuple[str, str | None],
        weights: tuple[float, float] = (1.0, 1.0),
    ) -> float:
        """One alternative of the first grid (see the module docstring)."""
        kind, reference_name = adjustment
        reference = self.encode(self.references[reference_name]) if reference_name else None

        def label_sentences(label: str) -> np.ndarray:
            names = self.encode([t.format(label) for t in TEMPLATES[templates]])
            descriptions = self.encode(labelled.descriptions[label]) if described else None
            if build == "max":
                return names if descriptions is None else np.concatenate([names, descriptions])
            centroid = weights[0] * unit(names.mean(0))
            if descriptions is not None:
                centroid = centroid + weights[1] * unit(descriptions.mean(0))
            return unit(centroid)[None]

        def scores(texts: np.ndarray, label: str) -> np.ndarray:
            sentences = label_sentences(label)
            ref = reference
            if kind.startswith("center"):
                assert ref is not None
                mean = ref.mean(0)
                texts, sentences, ref = unit(texts - mean), unit(sentences - mean), unit(ref - mean)
            similarity = (texts @ sentences.T).max(axis=1)
            if kind.endswith("prior") or kind.endswith("z"):
                assert ref is not None
                background = (ref @ sentences.T).max(axis=1)
                similarity = similarity - background.mean()
                if kind.endswith("z"):
                    similarity = similarity / background.std()
            return similarity

        return self.accuracy(labelled, scores)

    def second(
        self, labelled: LabelledSet, described: bool, templates: str, how: str, with_phrases: bool
    ) -> float:
        """One alternative of the second grid: parts (names, descriptions, phrases) combined
        ``how``, all calibrated against the everyday reference."""
        reference = self.encode(self.references["everyday"])

        def parts(label: str) -> list[np.ndarray]:
            found = [self.encode([t.format(label) for t in TEMPLATES[templates]])]
            if described:
                found.append(self.encode(labelled.descriptions[label]))
                if with_phrases:
                    found.append(self.encode(phrases(labelled.descriptions[label])))
            return found

        def scores(texts: np.ndarray, label: str) -> np.ndarray:
            found = parts(label)
            if how in ("centroid, prior", "center"):
                vector = unit(np.mean([unit(p.mean(0)) for p in found], axis=0))
                if how == "center":
                    mean = reference.mean(0)
                    return unit(texts - mean) @ unit(vector - mean)
                return texts @ vector - (reference @ vector).mean()
            if how == "each part, prior, mean":
                vectors = [unit(p.mean(0)) for p in found]
                return np.mean([texts @ v - (reference @ v).mean() for v in vectors], axis=0)
            sentences = np.concatenate(found)
            calibrated = texts @ sentences.T - (reference @ sentences.T).mean(axis=0)
            if how == "each sentence, prior, max":
                return calibrated.max(axis=1)
            if how == "each sentence, prior, top 3":
                return np.sort(calibrated, axis=1)[:, -3:].mean(axis=1)
            return calibrated.mean(axis=1)  # each sentence, prior, mean

        return self.accuracy(labelled, scores)


SECOND_WAYS = (
    "centroid, prior",
    "center",
    "each sentence, prior, max",
    "each sentence, prior, top 3",
    "each sentence, prior, mean",
    "each part, prior, mean",
)


def first_grid(grid: Grid, sets: Sequence[LabelledSet]) -> list[tuple[str, list[float]]]:
    """Rows (name, [bare, described] accuracy per set, in ``sets`` order)."""
    rows = []
    for templates in TEMPLATES:
        for adjustment in ADJUSTMENTS:
            for build in ("centroid", "max"):
                name = f"{templates} templates, {build}, {adjustment[0]}" + (
                    f" ({adjustment[1]})" if adjustment[1] else ""
                )
                values = []
                for labelled in sets:
                    for described in (False, True):
                        values.append(grid.first(labelled, described, templates, build, adjustment))
                rows.append((name, values))
    for label, weights in (
        ("descriptions only", (0.0, 1.0)),
        ("descriptions ×2", (1.0, 2.0)),
        ("name ×2", (2.0, 1.0)),
    ):
        for adjustment in ADJUSTMENTS:
            name = f"five templates, {label}, {adjustment[0]}" + (
                f" ({adjustment[1]})" if adjustment[1] else ""
            )
            values = []
            for labelled in sets:
                values += [
                    float("nan"),
                    grid.first(labelled, True, "five", "centroid", adjustment, weights),
                ]
            rows.append((name, values))
    return rows


def second_grid(grid: Grid, sets: Sequence[LabelledSet]) -> list[tuple[str, list[float]]]:
    rows = []
    for templates in ("five", "ten"):
        for how in SECOND_WAYS:
            for with_phrases in (False, True):
                name = f"{templates} templates, {how}" + (", + phrases" if with_phrases else "")
                values = []
                for labelled in sets:
                    values.append(grid.second(labelled, False, templates, how, with_phrases))
                    values.append(grid.second(labelled, True, templates, how, with_phrases))
                rows.append((name, values))
    return rows
