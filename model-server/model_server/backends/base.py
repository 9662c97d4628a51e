"""The one interface every zero-shot backend implements, and what they share."""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from batchinfer_protocol.zero_shot import Prediction
from model_server.shapes import ShapeLedger
from model_server.stage_clock import StageClock


@dataclass(frozen=True)
class Instance:
    """One text to classify, with the parameters of the request it came in.

    Parameters travel with each instance so that instances of different requests can share a
    model batch. `hypothesis_template` is None when the request named none: each backend then
    uses its own default (the NLI pipeline's template, or the embedding backend's descriptions).
    `label_descriptions` is aligned with `labels`: the request's descriptions of each label, ()
    for a label it did not describe (or an empty tuple when it described none).
    """

    text: str
    labels: tuple[str, ...]
    multi_label: bool = False
    hypothesis_template: str | None = None
    label_descriptions: tuple[tuple[str, ...], ...] = ()
    # What the model reads of each label, aligned with `labels`: the label cut to
    # MODEL_MAX_LABEL_CHARS before any template is formatted; () when no label was cut.
    label_texts: tuple[str, ...] = ()

    def label_text(self, index: int) -> str:
        """What the model reads of ``labels[index]`` (the answer keeps the whole label)."""
        return self.label_texts[index] if self.label_texts else self.labels[index]

    def descriptions_of(self, index: int) -> tuple[str, ...]:
        """The request's descriptions of ``labels[index]``; () when it gave none."""
        return self.label_descriptions[index] if index < len(self.label_descriptions) else ()


def ranked_prediction(text: str, labels: Sequence[str], scores: np.ndarray) -> Prediction:
    """Labels by descending score, broken the way the Hugging Face zero-shot pipeline breaks them
    (reversed argsort); every backend ranks with it.

    The protocol's ``Prediction``, the type the client decodes: the server encodes it once, in
    ``app.py``, with the protocol's ``encode_predictions``.
    """
    top = list(reversed(scores.argsort()))
    return Prediction(sequence=text, labels=[labels[i] for i in top], scores=scores[top].tolist())


class Backend(abc.ABC):
    """A zero-shot classifier that is loaded once and then answers batches of instances.

    Answering is two stages, so that the server can tokenize the next batch while the model
    computes this one: `prepare` (tokenize, and cut into padded forward batches; CPU work in
    the tokenizer thread) and `compute` (the forward passes and the scores; the model's worker
    thread). Each stage is called from one thread at a time, never concurrently with itself.
    `rows` tells the batcher how many model rows an instance costs, so that a batch fills the
    model's batch size whatever the number of labels.

    `loaded` turns true only once the model is loaded *and* warmed up (every forward shape
    run once), which is when /health answers 200; `warming_up` says which of the two is under
    way.
    """

    backend_name: str = "base"
    # The directory (or Hub name) the weights load from.
    model_path: str

    def __init__(self, model_name: str, device: torch.device) -> None:
        self.model_name = model_name
        self.device = device
        # sha256 of the model's files (model_digest.py), set by the app at load; None before.
        self.model_digest: str | None = None
        self.loaded = False
        self.warming_up = False
        self.shapes = ShapeLedger()
        # CPU and wall time per stage, and the device's busy time (the app's metrics read it).
        self.stages = StageClock()
        # Set when the server stops: a warm-up still under way ends between two shapes.
        self.stopping = threading.Event()

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer, then warm up; called once, off the event loop."""

    @abc.abstractmethod
    def prepare(self, instances: Sequence[Instance]) -> Any:
        """Tokenize the instances and cut them into forward batches, for `compute`."""

    @abc.abstractmethod
    def compute(self, prepared: Any) -> list[Prediction]:
        """Run what `prepare` made, answering in the instances' order."""

    def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        """Classify the instances, answering in their order (both stages in this thread)."""
        return self.compute(self.prepare(instances))

    @abc.abstractmethod
    def rows(self, instance: Instance) -> int:
        """How many model rows (sequences in a forward pass) one instance costs."""

    def describe(self) -> dict[str, str | bool | None]:
        """What /health reports about the backend."""
        return {
            "backend": self.backend_name,
            "model": self.model_name,
            "model_digest": self.model_digest,
            "device": str(self.device),
            "loaded": self.loaded,
        }


def resolve_device(setting: str) -> torch.device:
    """Turn MODEL_DEVICE into a torch device; `auto` picks CUDA when present."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MODEL_DEVICE=cuda but torch sees no CUDA device; use auto or cpu")
    return torch.device(setting)
