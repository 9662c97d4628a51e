"""Zero-shot classification by cosine similarity of sentence embeddings (all-MiniLM-L6-v2).

A bi-encoder embeds each text once, whatever the number of labels, so it is several times
cheaper than an NLI cross-encoder that reads every (text, label) pair. Labels are embedded once
and cached. Scores are softmax(similarity / temperature), so they sum to 1 like the pipeline's
single-label scores; with multi_label each label gets sigmoid((similarity - 0.3) / temperature).
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
from model_server.backends.label_descriptions import LABEL_PROTOTYPES, UNKNOWN_LABEL_TEMPLATE
from model_server.backends.nli import ranked_prediction

MAX_SEQ_LENGTH = 256
# Labels come from clients; past this many cached (label, template) pairs the cache restarts,
# so arbitrary labels cannot grow memory without bound.
LABEL_CACHE_SIZE = 4096
MULTI_LABEL_THRESHOLD = 0.3


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


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
        self.label_cache: dict[tuple[str, str], np.ndarray] = {}

    def load(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModel.from_pretrained(self.model_path)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
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

    def label_vectors(self, label: str, template: str | None) -> np.ndarray:
        """Prototype embeddings of a label: its descriptions if it is a seed label, else the
        label put into the request's template (or "This message is about {}.")."""
        key = (label, template or "")
        cached = self.label_cache.get(key)
        if cached is None:
            prototypes = LABEL_PROTOTYPES.get(label.strip().lower())
            if prototypes is None:
                prototypes = ((template or UNKNOWN_LABEL_TEMPLATE).format(label),)
            cached = self.encode(prototypes)
            if len(self.label_cache) >= LABEL_CACHE_SIZE:
                self.label_cache.clear()
            self.label_cache[key] = cached
        return cached

    def similarities(self, text_vector: np.ndarray, instance: Instance) -> np.ndarray:
        """Per label, the cosine similarity of the text to its closest prototype."""
        return np.array(
            [
                float((self.label_vectors(label, instance.hypothesis_template) @ text_vector).max())
                for label in instance.labels
            ],
            dtype=np.float32,
        )

    def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        unique_texts = list(dict.fromkeys(instance.text for instance in instances))
        text_vectors = dict(zip(unique_texts, self.encode(unique_texts), strict=True))
        predictions = []
        for instance in instances:
            similarity = self.similarities(text_vectors[instance.text], instance)
            if instance.multi_label:
                scores = sigmoid((similarity - MULTI_LABEL_THRESHOLD) / self.temperature)
            else:
                scores = softmax(similarity / self.temperature)
            predictions.append(ranked_prediction(instance.text, instance.labels, scores))
        return predictions
