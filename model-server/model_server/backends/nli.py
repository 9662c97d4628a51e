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

from batchinfer_protocol.zero_shot import Prediction
from model_server.backends.base import Backend, Instance, ranked_prediction
from model_server.cuda_graphs import ShapeGraphs
from model_server.first_token_layer import last_layer_for_first_token
from model_server.model_source import local_model_directory
from model_server.pair_tokens import PairEncoder, supports_pair_assembly
from model_server.runtime import (
    BucketedForward,
    Forward,
    ForwardOptions,
    compiled,
    model_max_length,
    resolve_dtype,
    torch_forward,
)
from model_server.shapes import ForwardBatch, PaddingTokens, pad_batch

logger = logging.getLogger(__name__)


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


def eos_head_logits(model: Any, eos_token_id: int) -> Any:
    """BART's classification on device tensors, without reading anything on the host.

    transformers' BartForSequenceClassification (modeling_bart.py, `forward`) checks with
    `torch.unique_consecutive` that every row holds as many <eos> and selects the last one's
    decoder state with a boolean mask: both wait for the GPU to finish, once per forward
    batch. Here the last <eos> of each row is found with an argmax over the reversed mask and
    gathered by index: the same state, so the same logits bit for bit (the server checks the
    <eos> counts on the host before the batch runs, `NliBackend.unequal_eos_counts`).
    """

    def call(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = tensors["input_ids"]
        hidden = model.model(**tensors, use_cache=False)[0]
        is_eos = input_ids.eq(eos_token_id).to(torch.int8)
        last = input_ids.shape[1] - 1 - is_eos.flip(1).argmax(1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return model.classification_head(hidden[rows, last.to(hidden.device)])

    return call


def has_eos_head(model: Any) -> bool:
    """Whether the model is a BART-style classifier whose head reads the last <eos> state."""
    return bool(
        getattr(model.config, "is_encoder_decoder", False)
        and hasattr(model, "classification_head")
        and hasattr(model, "model")
    )


class NliBackend(Backend):
    """Any Hugging Face sequence-classification NLI model (BERT-, RoBERTa-, BART-style...)."""

    backend_name = "nli"

    def __init__(
        self,
        model_path: str,
        device: torch.device,
        *,
        forward: ForwardOptions,
        default_template: str,
        max_batch_size: int | None = None,
        model_name: str | None = None,
    ) -> None:
        """`forward` and `default_template` come from ``ServerSettings`` (MODEL_* variables);
        `max_batch_size`, when given, overrides `forward.max_batch_size` (a shorthand)."""
        super().__init__(model_name or model_path, device)
        self.model_path = model_path
        self.default_template = default_template
        options = forward
        if max_batch_size is not None:
            options = dataclasses.replace(options, max_batch_size=max_batch_size)
        self.options = options
        self.dtype = resolve_dtype(options.dtype, device, options.runtime)
        self.tokenizer: Any = None
        self.runner: BucketedForward | None = None
        self.entail_id = -1
        self.eos_token_id: int | None = None
        self.input_names: list[str] = []
        # Each text and hypothesis tokenized once (fast tokenizers); None: pair by pair.
        self.pair_encoder: PairEncoder | None = None

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
        if supports_pair_assembly(self.tokenizer):
            self.pair_encoder = PairEncoder(self.tokenizer)
        max_length = model_max_length(
            self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)
        )
        forward, graphs = self.load_forward()
        self.runner = BucketedForward(
            forward=forward,
            plan=self.options.shape_plan(self.device, max_length),
            ledger=self.shapes,
            input_names=self.input_names,
            padding=PaddingTokens(self.tokenizer.pad_token_id, self.tokenizer.padding_side),
            device=self.device,
            graphs=graphs,
            stages=self.stages,
        )
        if self.options.warm_up:
            self.warming_up = True
            self.runner.warm_up(
                self.warm_up_row(), self.stopping, self.options.warm_up_scope(self.device)
            )
            self.warming_up = False
        else:
            self.shapes.warmed()
        self.loaded = True

    def load_forward(self) -> tuple[Forward, ShapeGraphs | None]:
        """The model behind MODEL_RUNTIME, returning float32 logits (rows, classes), and its
        CUDA graphs to capture at warm-up (None unless MODEL_CUDA_GRAPHS on CUDA)."""
        if self.options.runtime == "onnxruntime":
            from model_server.onnx_runtime import onnx_forward

            row = self.warm_up_row()
            sample = ForwardBatch((0, 0), 2, len(row["input_ids"]))
            inputs = pad_batch([row], sample, self.input_names, PaddingTokens(0))
            forward = onnx_forward(local_model_directory(self.model_path), inputs, self.options)
            return forward, None
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        last_layer_for_first_token(model)
        call = self.logits_call(model)
        return torch_forward(call, self.device), self.options.shape_graphs(call, self.device)

    def logits_call(self, model: Any) -> Any:
        """Device tensors in, logits out: BART-style heads without host reads, others as is."""
        if self.eos_token_id is not None and has_eos_head(model):
            model.model = compiled(model.model, self.options)
            return eos_head_logits(model, self.eos_token_id)
        runner = compiled(model, self.options)
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
        extra = {"use_cache": False} if takes_cache else {}
        return lambda tensors: runner(**tensors, **extra).logits

    def warm_up_row(self) -> dict[str, list[int]]:
        """A real pair's tokens, from which the warm-up makes rows of any length."""
        encoded = self.tokenizer([["warm up", "This example is warm."]], truncation=True)
        return {name: encoded[name][0] for name in self.input_names if name != "attention_mask"}

    def rows(self, instance: Instance) -> int:
        return sum(
            len(hypotheses) for hypotheses in label_hypotheses(instance, self.default_template)
        )

    def instance_pairs(self, instances: Sequence[Instance]) -> PoolPairs:
        """The pool's distinct texts, hypotheses and (text, hypothesis) pairs, and per
        instance, per label, its hypotheses' rows."""
        pool = PoolPairs()
        for instance in instances:
            text = pool.texts.setdefault(instance.text, len(pool.texts))
            groups = []
            for hypotheses in label_hypotheses(instance, self.default_template):
                rows = []
                for hypothesis in hypotheses:
                    pair = (text, pool.hypotheses.setdefault(hypothesis, len(pool.hypotheses)))
                    rows.append(pool.pairs.setdefault(pair, len(pool.pairs)))
                groups.append(rows)
            pool.instance_groups.append(groups)
        return pool

    def prepare(self, instances: Sequence[Instance]) -> PreparedPairs:
        pool = self.instance_pairs(instances)
        encodings = self.tokenize(pool)
        with self.stages.stage("assemble"):
            batches = self.loaded_runner().batches(encodings)
        return PreparedPairs(
            instances=list(instances),
            instance_groups=pool.instance_groups,
            encodings=encodings,
            batches=batches,
        )

    def compute(self, prepared: PreparedPairs) -> list[Prediction]:
        with self.stages.stage("forward"):
            parts = self.pair_logit_parts(prepared)
        with self.stages.stage("postprocess"):
            logits = self.loaded_runner().gather(len(prepared.encodings), parts)
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
        parts = self.pair_logit_parts(prepared)
        return self.loaded_runner().gather(len(prepared.encodings), parts)

    def pair_logit_parts(self, prepared: PreparedPairs) -> list[tuple[Sequence[int], torch.Tensor]]:
        """Per forward batch, in the order they ran: its pairs and their logits, on the device
        (launched, not waited for)."""
        runner = self.loaded_runner()
        parts: list[tuple[Sequence[int], torch.Tensor]] = []
        for batch, inputs in prepared.batches:
            # BART-style heads refuse a batch whose rows hold different numbers of <eos>
            # (a text that contains "</s>"); the pipeline runs such a pair alone, so do we.
            if self.unequal_eos_counts(inputs, len(batch.indices)):
                logger.info("rows with unequal <eos> counts: running %d alone", batch.rows)
                parts.extend(
                    ((i,), runner.run(*runner.one(prepared.encodings, i))) for i in batch.indices
                )
            else:
                parts.append((batch.indices, runner.run(batch, inputs)))
        if not parts:
            raise ValueError("pair_logits needs at least one pair")
        return parts

    def unequal_eos_counts(self, inputs: dict[str, np.ndarray], rows: int) -> bool:
        """Whether the first `rows` rows hold different numbers of <eos> (BART-style only)."""
        if self.eos_token_id is None or rows < 2:
            return False
        counts = (inputs["input_ids"][:rows] == self.eos_token_id).sum(axis=1)
        return bool((counts != counts[0]).any())

    def tokenize(self, pool: PoolPairs) -> list[dict[str, list[int]]]:
        """Token ids of each pair of the pool, exactly as the pipeline tokenizes them one at a
        time: each text and hypothesis once, then joined (`PairEncoder`), with a fast
        tokenizer; pair by pair otherwise (`tokenize_pairs`)."""
        if self.pair_encoder is None:
            with self.stages.stage("tokenize"):
                return self.tokenize_pairs(pool.pair_texts())
        with self.stages.stage("tokenize"):
            texts, hypotheses = self.pair_encoder.sequences(list(pool.texts), list(pool.hypotheses))
        with self.stages.stage("assemble"):
            return self.pair_encoder.join_all(texts, hypotheses, list(pool.pairs))

    def tokenize_pairs(self, pairs: list[tuple[str, str]]) -> list[dict[str, list[int]]]:
        """Token ids of each pair, tokenized whole, as the pipeline does one at a time.

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
class PoolPairs:
    """A pool's distinct texts, hypotheses and pairs, each mapped to its index (insertion
    order), and per instance, per label, the rows of its hypotheses' pairs."""

    texts: dict[str, int] = dataclasses.field(default_factory=dict)
    hypotheses: dict[str, int] = dataclasses.field(default_factory=dict)
    pairs: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)
    instance_groups: list[list[list[int]]] = dataclasses.field(default_factory=list)

    def pair_texts(self) -> list[tuple[str, str]]:
        """The pairs as (text, hypothesis) strings, in row order."""
        texts, hypotheses = list(self.texts), list(self.hypotheses)
        return [(texts[text], hypotheses[hypothesis]) for text, hypothesis in self.pairs]


@dataclass
class PreparedPairs:
    """What `NliBackend.prepare` hands to `compute`: pairs tokenized and padded into batches."""

    instances: list[Instance]
    # Per instance, per label: the rows of its hypotheses (one, or one per description).
    instance_groups: list[list[list[int]]]
    encodings: list[dict[str, list[int]]]
    batches: list[tuple[ForwardBatch, dict[str, np.ndarray]]]
