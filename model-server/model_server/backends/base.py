"""The one interface every zero-shot backend implements, and what they share."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch


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

    def descriptions_of(self, index: int) -> tuple[str, ...]:
        """The request's descriptions of ``labels[index]``; () when it gave none."""
        return self.label_descriptions[index] if index < len(self.label_descriptions) else ()


class Prediction(TypedDict):
    """The Hugging Face zero-shot pipeline's answer for one sequence."""

    sequence: str
    labels: list[str]
    scores: list[float]


class Backend(abc.ABC):
    """A zero-shot classifier that is loaded once and then answers batches of instances.

    `predict` is called from a single worker thread, never concurrently, so implementations need
    no locks. `rows` tells the batcher how many model rows an instance costs, so that a batch
    fills the model's batch size whatever the number of labels.
    """

    backend_name: str = "base"

    def __init__(self, model_name: str, device: torch.device) -> None:
        self.model_name = model_name
        self.device = device
        self.loaded = False

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer; called once, off the event loop."""

    @abc.abstractmethod
    def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        """Classify the instances, answering in their order."""

    @abc.abstractmethod
    def rows(self, instance: Instance) -> int:
        """How many model rows (sequences in a forward pass) one instance costs."""

    def describe(self) -> dict[str, str | bool]:
        """What /health reports about the backend."""
        return {
            "backend": self.backend_name,
            "model": self.model_name,
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


def resolve_dtype(fp16: bool, device: torch.device) -> torch.dtype:
    """fp16 only makes sense (and is only exact enough) on a GPU."""
    if fp16 and device.type != "cuda":
        raise ValueError(f"MODEL_FP16=true needs a CUDA device, got {device}; unset MODEL_FP16")
    return torch.float16 if fp16 else torch.float32


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding costs little compute.

    The sort is stable, so equal lengths keep their arrival order.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
