"""Zero-shot classification with an NLI cross-encoder, equal to the Hugging Face pipeline.

`transformers.pipeline("zero-shot-classification")` runs one (text, hypothesis) pair per forward
pass. We run the same pairs, from many requests at once, in length-sorted padded batches and then
apply the pipeline's exact post-processing (transformers 5.24,
pipelines/zero_shot_classification.py), so scores match it to float rounding.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from batchinfer_protocol.zero_shot import DEFAULT_HYPOTHESIS_TEMPLATE
from model_server.backends.base import (
    Backend,
    Instance,
    Prediction,
    length_sorted_chunks,
    resolve_dtype,
)

logger = logging.getLogger(__name__)

PIPELINE_TEMPLATE = DEFAULT_HYPOTHESIS_TEMPLATE


def entailment_id(label2id: dict[str, int]) -> int:
    """The pipeline's rule: the first label whose name starts with "entail", else -1."""
    for label, index in label2id.items():
        if label.lower().startswith("entail"):
            return index
    return -1


def zero_shot_scores(logits: np.ndarray, entail_id: int, multi_label: bool) -> np.ndarray:
    """The pipeline's post-processing for one sequence; `logits` is (labels, classes) float32.

    One label, or multi_label: softmax over [contradiction, entailment] per label, where
    contradiction is index 0 unless entailment is 0 (then -1). Otherwise softmax of the
    entailment logits across labels. Same numpy float32 operations as the pipeline.
    """
    if multi_label or logits.shape[0] == 1:
        contradiction_id = -1 if entail_id == 0 else 0
        pair_logits = logits[..., [contradiction_id, entail_id]]
        scores = np.exp(pair_logits) / np.exp(pair_logits).sum(-1, keepdims=True)
        return scores[..., 1]
    entail_logits = logits[..., entail_id]
    return np.exp(entail_logits) / np.exp(entail_logits).sum(-1, keepdims=True)


def label_hypotheses(instance: Instance, default_template: str) -> list[tuple[str, ...]]:
    """Per candidate label, the hypotheses it is tested with.

    A label the request describes is tested with each of its descriptions as they are (a
    description is a whole sentence: "The customer was charged twice."); any other label with
    the template, as the pipeline does. A request without descriptions is the pipeline exactly.
    """
    template = instance.hypothesis_template or default_template
    return [
        instance.descriptions_of(index) or (template.format(label),)
        for index, label in enumerate(instance.labels)
    ]


def best_hypothesis_logits(
    logits: np.ndarray, groups: list[list[int]], entail_id: int
) -> np.ndarray:
    """Per label (labels, classes): the logits of its most entailed hypothesis.

    `groups[i]` are the rows of label i's hypotheses in `logits`. A label with several
    descriptions is as entailed as its best one, as a text fits a label when it fits one of its
    meanings; the pipeline's post-processing then runs on these rows unchanged.
    """
    return np.stack([logits[rows][logits[rows][:, entail_id].argmax()] for rows in groups])


def ranked_prediction(text: str, labels: Sequence[str], scores: np.ndarray) -> Prediction:
    """Labels by descending score, broken the way the pipeline breaks them (reversed argsort)."""
    top = list(reversed(scores.argsort()))
    return {
        "sequence": text,
        "labels": [labels[i] for i in top],
        "scores": scores[top].tolist(),
    }


class NliBackend(Backend):
    """Any Hugging Face sequence-classification NLI model (BERT-, RoBERTa-, BART-style...)."""

    backend_name = "nli"

    def __init__(
        self,
        model_path: str,
        device: torch.device,
        *,
        fp16: bool = False,
        max_batch_size: int = 32,
        default_template: str = PIPELINE_TEMPLATE,
        model_name: str | None = None,
    ) -> None:
        super().__init__(model_name or model_path, device)
        self.model_path = model_path
        self.default_template = default_template
        self.dtype = resolve_dtype(fp16, device)
        self.max_batch_size = max_batch_size
        self.tokenizer: Any = None
        self.model: Any = None
        self.entail_id = -1
        self.input_names: list[str] = []
        self.forward_kwargs: dict[str, bool] = {}

    def load(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token is None:
            # What the pipeline does too: batching needs a pad token.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.entail_id = entailment_id(self.model.config.label2id)
        if self.entail_id == -1:
            logger.warning(
                "no label starting with 'entail' in %s; using the last class like the pipeline",
                self.model.config.label2id,
            )
        self.input_names = list(self.tokenizer.model_input_names)
        if "use_cache" in inspect.signature(self.model.forward).parameters:
            self.forward_kwargs = {"use_cache": False}
        self.loaded = True

    def rows(self, instance: Instance) -> int:
        return sum(
            len(hypotheses) for hypotheses in label_hypotheses(instance, self.default_template)
        )

    def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        pair_index: dict[tuple[str, str], int] = {}
        instance_groups: list[list[list[int]]] = []
        for instance in instances:
            groups = []
            for hypotheses in label_hypotheses(instance, self.default_template):
                pairs = [(instance.text, hypothesis) for hypothesis in hypotheses]
                groups.append([pair_index.setdefault(pair, len(pair_index)) for pair in pairs])
            instance_groups.append(groups)
        logits = self.pair_logits(list(pair_index))
        predictions = []
        for instance, groups in zip(instances, instance_groups, strict=True):
            label_logits = best_hypothesis_logits(logits, groups, self.entail_id)
            scores = zero_shot_scores(label_logits, self.entail_id, instance.multi_label)
            predictions.append(ranked_prediction(instance.text, instance.labels, scores))
        return predictions

    def pair_logits(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Logits of every (premise, hypothesis) pair, computed in length-sorted batches."""
        encodings = self.tokenize(pairs)
        lengths = [len(encoding["input_ids"]) for encoding in encodings]
        logits: np.ndarray | None = None
        for chunk in length_sorted_chunks(lengths, self.max_batch_size):
            chunk_encodings = [encodings[i] for i in chunk]
            try:
                chunk_logits = self.forward(chunk_encodings)
            except ValueError:
                if len(chunk) == 1:
                    raise
                # BART-style heads refuse a batch whose rows hold different numbers of <eos>
                # (a text that contains "</s>"); the pipeline runs such a pair alone, so do we.
                logger.info("batch of %d refused by the model; running it row by row", len(chunk))
                chunk_logits = np.concatenate([self.forward([row]) for row in chunk_encodings])
            if logits is None:
                logits = np.empty((len(pairs), chunk_logits.shape[1]), dtype=np.float32)
            logits[chunk] = chunk_logits
        if logits is None:
            raise ValueError("pair_logits needs at least one pair")
        return logits

    def forward(self, encodings: list[dict[str, list[int]]]) -> np.ndarray:
        """Float32 logits of one padded batch."""
        batch = self.tokenizer.pad(encodings, return_tensors="pt")
        inputs = {name: batch[name].to(self.device) for name in self.input_names}
        with torch.inference_mode():
            output = self.model(**inputs, **self.forward_kwargs).logits
        return output.float().cpu().numpy()

    def tokenize(self, pairs: list[tuple[str, str]]) -> list[dict[str, list[int]]]:
        """Token ids of each pair, exactly as the pipeline tokenizes them one at a time.

        Truncation is only_first so the hypothesis is never cut. The pipeline retries a pair
        without truncation when the tokenizer says the text is "too short" to truncate; a batch
        call fails as a whole, so then we tokenize pair by pair with the same rule.
        """
        names = [name for name in self.input_names if name != "attention_mask"]
        try:
            encoded = self.tokenizer(
                [list(pair) for pair in pairs], truncation="only_first", padding=False
            )
        except Exception as error:
            if "too short" not in str(error):
                raise
            return [self.tokenize_one(pair, names) for pair in pairs]
        return [{name: encoded[name][i] for name in names} for i in range(len(pairs))]

    def tokenize_one(self, pair: tuple[str, str], names: list[str]) -> dict[str, list[int]]:
        try:
            encoded = self.tokenizer([list(pair)], truncation="only_first", padding=False)
        except Exception as error:
            if "too short" not in str(error):
                raise
            encoded = self.tokenizer([list(pair)], truncation=False, padding=False)
        return {name: encoded[name][0] for name in names}
