"""Embedding similarities turned into zero-shot scores, with a "none of these" reference.

The NLI pipeline scores labels in two ways, and so do we:

* one label among several, not multi_label: the labels compete; scores are a softmax across
  labels of the *calibrated* similarities and sum to 1 (the pipeline: softmax of the entailment
  logits across labels). Calibrated: each label's similarity less its prior, the mean
  similarity of the "none of these" reference to it (contextual calibration, Zhao et al. 2021,
  "Calibrate Before Use: Improving Few-Shot Performance of Language Models", with everyday
  texts in place of content-free ones, which measured worse). Some labels sit closer to every
  text than others (a broad name, a long description); without the prior they win texts that
  are about none of them in particular. The prior is the label's own, fixed when the label is
  embedded: a text's answer never depends on the other texts of its request;
* one candidate label, or multi_label: each label alone says how well the text fits it (the
  pipeline: softmax of entailment against contradiction). A cosine similarity has no
  contradiction side, so each label gets one from a fixed reference of texts about nothing in
  particular (``none_of_these.json``: weather, cooking, greetings...). Its threshold is how
  close those unrelated texts come to the label, mean + ``NONE_SPREAD`` (3) standard deviations;
  a text's fit is ``sigmoid((similarity - threshold) / FIT_TEMPERATURE)``: 0.5 at the
  threshold, near 0 for a text no closer than unrelated ones, near 1 well above them.

NONE_SPREAD is the conventional three sigma, chosen before measuring, not fitted: the spread
that is best on the default labels' set (4.5) is poor on the second set, since described labels
sit closer to every text of their domain than bare ones. bench/bench_zero_shot.py reports how
well one-label scores tell a label's texts from the others' at 0.5 on both sets.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

NONE_OF_THESE = "none_of_these.json"
NONE_SPREAD = 3.0
FIT_TEMPERATURE = 0.05


@functools.cache
def none_of_these_texts() -> tuple[str, ...]:
    """The shipped reference texts: short, everyday, about no label in particular."""
    data = resources.files(__package__).joinpath(NONE_OF_THESE)
    texts = json.loads(data.read_text(encoding="utf-8"))
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{data} must be a non-empty JSON list of strings")
    return tuple(texts)


@dataclass(frozen=True)
class LabelVector:
    """A label as the model sees it: a unit vector (dim,), its prior (the mean cosine
    similarity of the "none of these" reference to it) and its "none of these" threshold."""

    vector: np.ndarray
    prior: float
    none_threshold: float

    @classmethod
    def of(cls, parts: Sequence[np.ndarray], reference: np.ndarray) -> LabelVector:
        """From the unit embeddings (n, dim) of each part of the label (its name in templates,
        its descriptions, their phrases; an empty (0, dim) part is left out, the first must not
        be empty) and of the "none of these" reference (m, dim).

        The label is the mean of the parts' centroids, in equal parts: the templates average out
        one wording's bias, the descriptions add what the name does not say, and no part
        outweighs another however many sentences it has.
        """
        centroids = [unit(part.mean(axis=0)) for part in parts if len(part)]
        if not centroids or not len(parts[0]):
            raise ValueError("a label needs at least one embedded name (parts[0] is empty)")
        vector = unit(np.mean(centroids, axis=0)).astype(np.float32)
        unrelated = reference @ vector
        prior = float(unrelated.mean())
        return cls(
            vector=vector,
            prior=prior,
            none_threshold=prior + NONE_SPREAD * float(unrelated.std()),
        )


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def exclusive_scores(
    similarities: np.ndarray, priors: np.ndarray, temperature: float
) -> np.ndarray:
    """Scores of labels that compete for one text (labels,), summing to 1: a softmax of the
    similarities less each label's prior (all (labels,))."""
    return softmax((similarities - priors) / temperature)


def fit_scores(similarities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per label (labels,), how well the text fits it on its own, in (0, 1)."""
    return sigmoid((similarities - thresholds) / FIT_TEMPERATURE)
