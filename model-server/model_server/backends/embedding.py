"""Zero-shot classification by cosine similarity of sentence embeddings (all-MiniLM-L6-v2).

A bi-encoder embeds each text once, whatever the number of labels, so it is several times
cheaper than an NLI cross-encoder that reads every (text, label) pair. Labels are embedded once
and cached: a label is its name in several templates and its descriptions, averaged in equal
parts (see label_descriptions and label_fit). Scores are softmax(similarity / temperature), so they
sum to 1 like the pipeline's single-label scores; with one label or multi_label each label gets
its fit against a "none of these" reference (see label_fit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from model_server.backends.base import (
    Backend,
    Instance,
    Prediction,
    length_sorted_chunks,
    resolve_dtype,
)
from model_server.backends.label_descriptions import label_prototypes
from model_server.backends.label_fit import (
    LabelVector,
    exclusive_scores,
    fit_scores,
    none_of_these_texts,
)
from model_server.backends.nli import ranked_prediction

MAX_SEQ_LENGTH = 256
# Labels come from clients; past this many cached labels the cache restarts, so arbitrary
# labels cannot grow memory without bound.
LABEL_CACHE_SIZE = 4096

LabelKey = tuple[str, tuple[str, ...], str | None]


class EmbeddingBackend(Backend):
    """Mean-pooled, L2-normalised sentence embeddings, as sentence-transformers computes them."""

    backend_name = "embedding"

    def __init__(
        self,
        model_path: str,
        device: torch.device,
        *,
        fp16: bool = False,
        max_batch_size: int = 32,
        temperature: float = 0.05,
        model_name: str | None = None,
    ) -> None:
        super().__init__(model_name or model_path, device)
        self.model_path = model_path
        self.dtype = resolve_dtype(fp16, device)
        self.max_batch_size = max_batch_size
        self.temperature = temperature
        self.tokenizer: Any = None
        self.model: Any = None
        self.label_cache: dict[LabelKey, LabelVector] = {}
        self.none_of_these: np.ndarray | None = None

    def load(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModel.from_pretrained(self.model_path)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.none_of_these = self.encode(none_of_these_texts())
        self.loaded = True

    def rows(self, instance: Instance) -> int:
        return 1

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, (len(texts), dim) float32, in length-sorted batches."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=MAX_SEQ_LENGTH)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        vectors: np.ndarray | None = None
        for chunk in length_sorted_chunks(lengths, self.max_batch_size):
            batch = self.tokenizer.pad(
                {name: [encoded[name][i] for i in chunk] for name in encoded}, return_tensors="pt"
            )
            batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            chunk_vectors = pooled.cpu().numpy()
            if vectors is None:
                vectors = np.empty((len(texts), chunk_vectors.shape[1]), dtype=np.float32)
            vectors[chunk] = chunk_vectors
        if vectors is None:
            raise ValueError("encode needs at least one text")
        return vectors

    def encode_all(self, texts: Sequence[str]) -> np.ndarray:
        """Like encode, but no texts give an empty (0, dim) array."""
        if texts:
            return self.encode(texts)
        return np.empty((0, self.model.config.hidden_size), dtype=np.float32)

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
            cached = LabelVector.of(
                self.encode(prototypes.names),
                self.encode_all(prototypes.descriptions),
                self.none_of_these,
            )
            if len(self.label_cache) >= LABEL_CACHE_SIZE:
                self.label_cache.clear()
            self.label_cache[key] = cached
        return cached

    def label_scores(self, text_vector: np.ndarray, instance: Instance) -> np.ndarray:
        """The instance's scores (labels,) in label order: exclusive, or each label's fit."""
        labels = [
            self.label_vector(label, instance.descriptions_of(index), instance.hypothesis_template)
            for index, label in enumerate(instance.labels)
        ]
        similarities = np.array([float(label.vector @ text_vector) for label in labels])
        if instance.multi_label or len(labels) == 1:
            thresholds = np.array([label.none_threshold for label in labels])
            return fit_scores(similarities, thresholds)
        return exclusive_scores(similarities, self.temperature)

    def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        unique_texts = list(dict.fromkeys(instance.text for instance in instances))
        text_vectors = dict(zip(unique_texts, self.encode(unique_texts), strict=True))
        predictions = []
        for instance in instances:
            scores = self.label_scores(text_vectors[instance.text], instance)
            predictions.append(ranked_prediction(instance.text, instance.labels, scores))
        return predictions
