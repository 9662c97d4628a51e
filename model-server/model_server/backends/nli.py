"""Zero-shot classification with an NLI cross-encoder, equal to the Hugging Face pipeline.

`transformers.pipeline("zero-shot-classification")` runs one (text, hypothesis) pair per forward
pass. We run the same pairs, from many requests at once, in length-sorted padded batches and then
apply the pipeline's exact post-processing (transformers 5.24,
pipelines/zero_shot_classification.py), so scores match it to float rounding: padding a row
further (to its length bucket) or batching it with others changes nothing but float rounding,
since padded positions are masked out and BART's decoder is causal (a pad after the last <eos>
never reaches the <eos> state the head reads).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from batchinfer_protocol.zero_shot import DEFAULT_HYPOTHESIS_TEMPLATE
from model_server.backends.base import Backend, Instance, Prediction
from model_server.first_token_layer import last_layer_for_first_token
from model_server.model_source import local_model_directory
from model_server.runtime import (
    BucketedForward,
    Forward,
    ForwardOptions,
    model_max_length,
    resolve_dtype,
    torch_forward,
)
from model_server.shapes import ForwardBatch, PaddingTokens, pad_batch

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
        instance.descriptions_of(index) or (template.format(instance.label_text(index)),)
        for index in range(len(instance.labels))
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
        forward: ForwardOptions | None = None,
        max_batch_size: int | None = None,
        default_template: str = PIPELINE_TEMPLATE,
        model_name: str | None = None,
    ) -> None:
        """`max_batch_size`, when given, overrides `forward.max_batch_size` (a shorthand)."""
        super().__init__(model_name or model_path, device)
        self.model_path = model_path
        self.default_template = default_template
        options = forward or ForwardOptions()
        if max_batch_size is not None:
            options = dataclasses.replace(options, max_batch_size=max_batch_size)
        self.options = options
        self.dtype = resolve_dtype(options.dtype, device, options.runtime)
        self.tokenizer: Any = None
        self.runner: BucketedForward | None = None
        self.entail_id = -1
        self.eos_token_id: int | None = None
        self.input_names: list[str] = []

    def load(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token is None:
            # What the pipeline does too: batching needs a pad token.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        config = AutoConfig.from_pretrained(self.model_path)
        self.entail_id = entailment_id(config.label2id)
        # BART-style heads read the last <eos> of each row and need every row of a batch to
        # hold as many; the exported graph cannot check that, so the backend does.
        self.eos_token_id = config.eos_token_id if config.is_encoder_decoder else None
        if self.entail_id == -1:
            logger.warning(
                "no label starting with 'entail' in %s; using the last class like the pipeline",
                config.label2id,
            )
        self.input_names = list(self.tokenizer.model_input_names)
        max_length = model_max_length(
            self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)
        )
        self.runner = BucketedForward(
            forward=self.load_forward(),
            plan=self.options.shape_plan(self.device, max_length),
            ledger=self.shapes,
            input_names=self.input_names,
            padding=PaddingTokens(self.tokenizer.pad_token_id, self.tokenizer.padding_side),
        )
        if self.options.warm_up:
            self.warming_up = True
            self.runner.warm_up(self.warm_up_row(), self.stopping)
            self.warming_up = False
        else:
            self.shapes.warmed()
        self.loaded = True

    def load_forward(self) -> Forward:
        """The model behind MODEL_RUNTIME, returning float32 logits (rows, classes)."""
        if self.options.runtime == "onnxruntime":
            from model_server.onnx_runtime import onnx_forward

            row = self.warm_up_row()
            sample = ForwardBatch((0, 0), 2, len(row["input_ids"]))
            inputs = pad_batch([row], sample, self.input_names, PaddingTokens(0))
            return onnx_forward(local_model_directory(self.model_path), inputs, self.options)
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        last_layer_for_first_token(model)
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
        extra = {"use_cache": False} if takes_cache else {}
        return torch_forward(model, self.device, self.options, lambda out, _: out.logits, extra)

    def warm_up_row(self) -> dict[str, list[int]]:
        """A real pair's tokens, from which the warm-up makes rows of any length."""
        encoded = self.tokenizer([["warm up", "This example is warm."]], truncation=True)
        return {name: encoded[name][0] for name in self.input_names if name != "attention_mask"}

    def rows(self, instance: Instance) -> int:
        return sum(
            len(hypotheses) for hypotheses in label_hypotheses(instance, self.default_template)
        )

    def instance_pairs(
        self, instances: Sequence[Instance]
    ) -> tuple[list[tuple[str, str]], list[list[list[int]]]]:
        """The distinct (text, hypothesis) pairs; per instance, per label, its hypotheses' rows."""
        pair_index: dict[tuple[str, str], int] = {}
        instance_groups: list[list[list[int]]] = []
        for instance in instances:
            groups = []
            for hypotheses in label_hypotheses(instance, self.default_template):
                pairs = [(instance.text, hypothesis) for hypothesis in hypotheses]
                groups.append([pair_index.setdefault(pair, len(pair_index)) for pair in pairs])
            instance_groups.append(groups)
        return list(pair_index), instance_groups

    def prepare(self, instances: Sequence[Instance]) -> PreparedPairs:
        pairs, instance_groups = self.instance_pairs(instances)
        encodings = self.tokenize(pairs)
        return PreparedPairs(
            instances=list(instances),
            instance_groups=instance_groups,
            encodings=encodings,
            batches=self.loaded_runner().batches(encodings),
        )

    def compute(self, prepared: PreparedPairs) -> list[Prediction]:
        logits = self.pair_logits(prepared)
        predictions = []
        for instance, groups in zip(prepared.instances, prepared.instance_groups, strict=True):
            label_logits = best_hypothesis_logits(logits, groups, self.entail_id)
            scores = zero_shot_scores(label_logits, self.entail_id, instance.multi_label)
            predictions.append(ranked_prediction(instance.text, instance.labels, scores))
        return predictions

    def loaded_runner(self) -> BucketedForward:
        if self.runner is None:
            raise RuntimeError("the nli backend is not loaded; call load() first")
        return self.runner

    def pair_logits(self, prepared: PreparedPairs) -> np.ndarray:
        """Logits (pairs, classes) float32 of every pair, one forward per planned batch."""
        runner = self.loaded_runner()
        logits: np.ndarray | None = None
        for batch, inputs in prepared.batches:
            # BART-style heads refuse a batch whose rows hold different numbers of <eos>
            # (a text that contains "</s>"); the pipeline runs such a pair alone, so do we.
            if self.unequal_eos_counts(inputs, len(batch.indices)):
                logger.info("rows with unequal <eos> counts: running %d alone", batch.rows)
                batch_logits = np.concatenate(
                    [runner.run(*runner.one(prepared.encodings, i)) for i in batch.indices]
                )
            else:
                batch_logits = runner.run(batch, inputs)
            if logits is None:
                logits = np.empty((len(prepared.encodings), batch_logits.shape[1]), np.float32)
            logits[list(batch.indices)] = batch_logits
        if logits is None:
            raise ValueError("pair_logits needs at least one pair")
        return logits

    def unequal_eos_counts(self, inputs: dict[str, np.ndarray], rows: int) -> bool:
        """Whether the first `rows` rows hold different numbers of <eos> (BART-style only)."""
        if self.eos_token_id is None or rows < 2:
            return False
        counts = (inputs["input_ids"][:rows] == self.eos_token_id).sum(axis=1)
        return bool((counts != counts[0]).any())

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


@dataclass
class PreparedPairs:
    """What `NliBackend.prepare` hands to `compute`: pairs tokenized and padded into batches."""

    instances: list[Instance]
    # Per instance, per label: the rows of its hypotheses (one, or one per description).
    instance_groups: list[list[list[int]]]
    encodings: list[dict[str, list[int]]]
    batches: list[tuple[ForwardBatch, dict[str, np.ndarray]]]
