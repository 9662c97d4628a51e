"""Zero-shot classification by cosine similarity of sentence embeddings (all-MiniLM-L6-v2).

A bi-encoder embeds each text once, whatever the number of labels, so it is several times
cheaper than an NLI cross-encoder that reads every (text, label) pair. Labels are embedded once
and cached: a label is its name in several templates, its descriptions and their phrases,
averaged in equal parts (see label_descriptions and label_fit). Scores are
softmax((similarity - prior) / temperature), the prior being the label's mean similarity to a
fixed reference of everyday texts, so they sum to 1 like the pipeline's single-label scores;
with one label or multi_label each label gets its fit against that "none of these" reference
(see label_fit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from batchinfer_protocol.zero_shot import Prediction
from model_server.backends.base import Backend, Instance, ranked_prediction
from model_server.backends.label_descriptions import label_prototypes
from model_server.backends.label_fit import (
    LabelVector,
    exclusive_scores,
    fit_scores,
    none_of_these_texts,
)
from model_server.runtime import (
    BucketedForward,
    ForwardOptions,
    compiled,
    resolve_dtype,
    torch_forward,
)
from model_server.shapes import ForwardBatch, PaddingTokens

MAX_SEQ_LENGTH = 256
# Labels come from clients; past this many cached labels the cache restarts, so arbitrary
# labels cannot grow memory without bound.
LABEL_CACHE_SIZE = 4096

LabelKey = tuple[str, tuple[str, ...], str | None]


def mean_pooled(output: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the token states over the attention mask, L2-normalised (sentence-transformers)."""
    hidden = output.last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


@dataclass
class PreparedTexts:
    """What `EmbeddingBackend.prepare` hands to `compute`: distinct texts, padded into batches."""

    instances: list[Instance]
    texts: list[str]
    batches: list[tuple[ForwardBatch, dict[str, np.ndarray]]]


class EmbeddingBackend(Backend):
    """Mean-pooled, L2-normalised sentence embeddings, as sentence-transformers computes them."""

    backend_name = "embedding"

    def __init__(
        self,
        model_path: str,
        device: torch.device,
        *,
        forward: ForwardOptions,
        temperature: float,
        max_batch_size: int | None = None,
        model_name: str | None = None,
    ) -> None:
        """`forward` and `temperature` come from ``ServerSettings`` (MODEL_MAX_BATCH_SIZE …,
        MODEL_EMBEDDING_TEMPERATURE); `max_batch_size`, when given, overrides
        `forward.max_batch_size` (a shorthand)."""
        super().__init__(model_name or model_path, device)
        self.model_path = model_path
        options = forward
        if max_batch_size is not None:
            options = dataclasses.replace(options, max_batch_size=max_batch_size)
        if options.runtime != "torch":
            raise ValueError(
                f"MODEL_RUNTIME={options.runtime} is for MODEL_BACKEND=nli; the embedding "
                "backend runs on torch"
            )
        self.options = options
        self.dtype = resolve_dtype(options.dtype, device, options.runtime)
        self.temperature = temperature
        self.tokenizer: Any = None
        self.runner: BucketedForward | None = None
        self.input_names: list[str] = []
        self.hidden_size = 0
        self.label_cache: dict[LabelKey, LabelVector] = {}
        self.none_of_these: np.ndarray | None = None

    def load(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModel.from_pretrained(self.model_path)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        self.hidden_size = int(model.config.hidden_size)
        self.input_names = list(self.tokenizer.model_input_names)
        runner = compiled(model, self.options)

        def call(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            return mean_pooled(runner(**tensors), tensors)

        self.runner = BucketedForward(
            forward=torch_forward(call, self.device),
            plan=self.options.shape_plan(self.device, MAX_SEQ_LENGTH),
            ledger=self.shapes,
            input_names=self.input_names,
            padding=PaddingTokens(self.tokenizer.pad_token_id, self.tokenizer.padding_side),
            device=self.device,
            graphs=self.options.shape_graphs(call, self.device),
            stages=self.stages,
        )
        if self.options.warm_up:
            self.warming_up = True
            self.runner.warm_up(
                self.encodings(["warm up the encoder"])[0],
                self.stopping,
                self.options.warm_up_scope(self.device),
            )
            self.warming_up = False
        else:
            self.shapes.warmed()
        # After the warm-up: these texts take shapes of the warmed plan.
        self.none_of_these = self.encode(none_of_these_texts())
        self.loaded = True

    def rows(self, instance: Instance) -> int:
        return 1

    def loaded_runner(self) -> BucketedForward:
        if self.runner is None:
            raise RuntimeError("the embedding backend is not loaded; call load() first")
        return self.runner

    def encodings(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        """Token ids of each text (one batch call of the fast tokenizer), truncated."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=MAX_SEQ_LENGTH)
        names = [name for name in self.input_names if name != "attention_mask"]
        return [{name: encoded[name][i] for name in names} for i in range(len(texts))]

    def embed(self, count: int, batches: list[tuple[ForwardBatch, dict]]) -> np.ndarray:
        """Unit-length embeddings (count, dim) float32 of the planned, padded batches."""
        runner = self.loaded_runner()
        if not batches:
            raise ValueError("encode needs at least one text")
        parts = [(batch.indices, runner.run(batch, inputs)) for batch, inputs in batches]
        return runner.gather(count, parts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, (len(texts), dim) float32, in length-sorted batches."""
        return self.embed(len(texts), self.loaded_runner().batches(self.encodings(texts)))

    def encode_all(self, texts: Sequence[str]) -> np.ndarray:
        """Like encode, but no texts give an empty (0, dim) array."""
        if texts:
            return self.encode(texts)
        return np.empty((0, self.hidden_size), dtype=np.float32)

    def label_vector(
        self, label: str, descriptions: tuple[str, ...], template: str | None
    ) -> LabelVector:
        """The label's embedding and "none of these" threshold, cached per (label, descriptions,
        template)."""
        key = (label, descriptions, template)
        cached = self.label_cache.get(key)
        if cached is None:
            if self.none_of_these is None:
                raise RuntimeError("the embedding backend is not loaded; call load() first")
            prototypes = label_prototypes(label, descriptions, template)
            parts = (prototypes.names, prototypes.descriptions, prototypes.phrases)
            vectors = self.encode([sentence for part in parts for sentence in part])
            ends = np.cumsum([len(part) for part in parts])[:-1]
            cached = LabelVector.of(np.split(vectors, ends), self.none_of_these)
            if len(self.label_cache) >= LABEL_CACHE_SIZE:
                self.label_cache.clear()
            self.label_cache[key] = cached
        return cached

    def label_scores(self, text_vector: np.ndarray, instance: Instance) -> np.ndarray:
        """The instance's scores (labels,) in label order: exclusive, or each label's fit."""
        labels = [
            self.label_vector(
                instance.label_text(index),
                instance.descriptions_of(index),
                instance.hypothesis_template,
            )
            for index in range(len(instance.labels))
        ]
        similarities = np.array([float(label.vector @ text_vector) for label in labels])
        if instance.multi_label or len(labels) == 1:
            thresholds = np.array([label.none_threshold for label in labels])
            return fit_scores(similarities, thresholds)
        priors = np.array([label.prior for label in labels])
        return exclusive_scores(similarities, priors, self.temperature)

    def prepare(self, instances: Sequence[Instance]) -> PreparedTexts:
        texts = list(dict.fromkeys(instance.text for instance in instances))
        with self.stages.stage("tokenize"):
            encodings = self.encodings(texts)
        with self.stages.stage("assemble"):
            batches = self.loaded_runner().batches(encodings)
        return PreparedTexts(list(instances), texts, batches)

    def compute(self, prepared: PreparedTexts) -> list[Prediction]:
        runner = self.loaded_runner()
        with self.stages.stage("forward"):
            parts = [
                (batch.indices, runner.run(batch, inputs)) for batch, inputs in prepared.batches
            ]
        with self.stages.stage("postprocess"):
            vectors = runner.gather(len(prepared.texts), parts)
            text_vectors = dict(zip(prepared.texts, vectors, strict=True))
            predictions = []
            for instance in prepared.instances:
                scores = self.label_scores(text_vectors[instance.text], instance)
                predictions.append(ranked_prediction(instance.text, instance.labels, scores))
        return predictions
