"""The ``POST /predict`` contract of the zero-shot model server (Vertex AI custom-container form).

Request::

    {"instances": ["text", ...] | [{"text": "..."}, ...],
     "parameters": {"candidate_labels": [...], "multi_label": false,
                    "hypothesis_template": "This example is {}.",
                    "label_descriptions": {"<label>": ["<description>", ...], ...}}}

``label_descriptions`` (optional) tells the model what a label means, in one or more sentences
per label; labels without one are classified by their name. A deployment's descriptions file
(``BATCHINFER_LABEL_DESCRIPTIONS_FILE``) holds the same object.

Response (200), one prediction per instance, in instance order; labels sorted by descending score
as the Hugging Face ``zero-shot-classification`` pipeline returns them::

    {"predictions": [{"sequence": "...", "labels": [...], "scores": [...]}, ...],
     "model": "<model id the server serves>",
     "model_digest": "sha256:<hex>"}

``model_digest`` (added after ``model``; servers before it leave it out, and clients that do
not read it are unaffected) identifies the weights, configuration and tokenizer the server
loaded: two checkpoints under one ``model`` name have different digests. ``GET /health``
reports the same value.

Refusal (4xx)::

    {"error": "<what is wrong and what to do>",
     "instance_errors": [{"index": 3, "reason": "..."}, ...]}

``instance_errors`` names the instances that alone caused a refusal, so a client can drop exactly
those and resend the rest: one bad text never costs the other texts of its request.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LABELS: tuple[str, ...] = ("mobile", "website", "billing", "account access")
# The Hugging Face zero-shot pipeline's default (transformers ZeroShotClassificationPipeline).
DEFAULT_HYPOTHESIS_TEMPLATE = "This example is {}."
# Candidate labels per request the server accepts by default (MODEL_MAX_LABELS).
DEFAULT_MAX_LABELS = 64
# Instances per request the server accepts by default (MODEL_MAX_INSTANCES).
DEFAULT_MAX_INSTANCES = 1000
# Bytes of a request body the server accepts by default (MODEL_MAX_BODY_BYTES).
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024

# How a model digest starts (``sha256:`` and 64 hex digits).
MODEL_DIGEST_PREFIX = "sha256:"

# Descriptions of one label: each is a prototype (embedding) or a hypothesis row (NLI).
MAX_DESCRIPTIONS_PER_LABEL = 16
MAX_DESCRIPTION_CHARS = 1000

LabelDescriptions = Mapping[str, tuple[str, ...]]
"""Label -> its descriptions, in the order given (the ``label_descriptions`` parameter)."""


class ParameterError(ValueError):
    """A ``parameters`` value the server refuses (HTTP 422); the text says what to change."""


@dataclass(frozen=True)
class Prediction:
    """One zero-shot answer, as the Hugging Face pipeline gives it: labels by descending score."""

    sequence: str
    labels: list[str]
    scores: list[float]

    def as_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "labels": self.labels, "scores": self.scores}


@dataclass(frozen=True)
class InstanceError:
    """An instance the server refused on its own merits; the rest of its request is fine."""

    index: int
    reason: str


@dataclass(frozen=True)
class PredictParameters:
    """The ``parameters`` of a predict request."""

    candidate_labels: tuple[str, ...] = DEFAULT_LABELS
    multi_label: bool = False
    # None: the server's default (the pipeline's template for nli, the labels' descriptions or
    # several templates for embedding).
    hypothesis_template: str | None = None
    # Only the candidate labels' entries travel; empty means "classify by the label names".
    label_descriptions: LabelDescriptions = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "candidate_labels": list(self.candidate_labels),
            "multi_label": self.multi_label,
        }
        if self.hypothesis_template is not None:
            body["hypothesis_template"] = self.hypothesis_template
        descriptions = {
            label: list(self.label_descriptions[label])
            for label in self.candidate_labels
            if self.label_descriptions.get(label)
        }
        if descriptions:
            body["label_descriptions"] = descriptions
        return body


def check_labels(labels: Sequence[str], *, max_labels: int = DEFAULT_MAX_LABELS) -> tuple[str, ...]:
    """``labels`` as a tuple, or a :class:`ParameterError`: none, empty, repeated or too many."""
    if not labels:
        raise ParameterError("the candidate labels are empty; give at least one label")
    if len(labels) > max_labels:
        raise ParameterError(
            f"{len(labels)} candidate labels; the limit is {max_labels} (MODEL_MAX_LABELS)"
        )
    if any(not label.strip() for label in labels):
        raise ParameterError(f"the candidate labels contain an empty label: {list(labels)!r:.200}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ParameterError(f"the candidate labels repeat {duplicates}; give each label once")
    return tuple(labels)


def check_hypothesis_template(template: str) -> str:
    """``template`` when it makes a distinct hypothesis per label, or a :class:`ParameterError`.

    The pipeline fills the template with ``template.format(label)``, so a slot may be written
    ``{}`` or ``{0}`` (``{!r}`` too). The template is valid when two different labels give two
    different hypotheses: one without a real slot (``"No slot."``, ``"About {{}}."``) would give
    every label the same hypothesis and the same score. Format specs, attribute and index access
    are refused: ``{:>999999999}`` would make every label a gigabyte, ``{0.__class__}`` reads
    Python internals.
    """
    try:
        fields = [
            (name, spec)
            for _, name, spec, _ in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as error:
        raise ParameterError(
            f"hypothesis template {template!r:.200} cannot be formatted with one label "
            f"({type(error).__name__}: {error}); write it with one '{{}}' where the label goes"
        ) from error
    if any(name not in ("", "0") or spec for name, spec in fields):
        raise ParameterError(
            f"hypothesis template {template!r:.200} may hold the label only as '{{}}' or '{{0}}' "
            "(no name, attribute, index or format spec)"
        )
    try:
        first, second = (template.format(label) for label in ("billing", "website"))
    except (IndexError, KeyError, ValueError, TypeError) as error:
        raise ParameterError(
            f"hypothesis template {template!r:.200} cannot be formatted with one label "
            f"({type(error).__name__}: {error}); write it with one '{{}}' where the label goes"
        ) from error
    if first == second:
        raise ParameterError(
            f"hypothesis template {template!r:.200} gives the same hypothesis {first!r:.200} for "
            "every label; write it with one '{}' where the label goes"
        )
    return template


def check_label_descriptions(raw: object) -> dict[str, tuple[str, ...]]:
    """``label_descriptions`` as ``{label: (description, ...)}``, or a :class:`ParameterError`.

    Shape: a JSON object whose keys are labels and whose values are a list of non-empty strings
    (at most ``MAX_DESCRIPTIONS_PER_LABEL`` of ``MAX_DESCRIPTION_CHARS`` characters each) or one
    string. Labels that are not candidates of a request are allowed and unused, so one file can
    describe every label a deployment knows.
    """
    if not isinstance(raw, Mapping):
        raise ParameterError(
            f"label descriptions must be an object {{label: [description, ...]}}, got {raw!r:.80}"
        )
    descriptions: dict[str, tuple[str, ...]] = {}
    for label, value in raw.items():
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise ParameterError(
                f"the descriptions of {label!r} must be a list of strings, got {value!r:.80}"
            )
        if not texts or any(not text.strip() for text in texts):
            raise ParameterError(
                f"the descriptions of {label!r} contain an empty one: {texts!r:.120}; "
                "give at least one non-empty sentence or leave the label out"
            )
        if len(texts) > MAX_DESCRIPTIONS_PER_LABEL:
            raise ParameterError(
                f"{len(texts)} descriptions of {label!r}; the limit is "
                f"{MAX_DESCRIPTIONS_PER_LABEL} per label"
            )
        too_long = [text for text in texts if len(text) > MAX_DESCRIPTION_CHARS]
        if too_long:
            raise ParameterError(
                f"a description of {label!r} has {len(too_long[0])} characters; the limit is "
                f"{MAX_DESCRIPTION_CHARS}"
            )
        descriptions[str(label)] = tuple(texts)
    return descriptions


def encode_request(texts: Sequence[str], parameters: PredictParameters) -> dict[str, Any]:
    """The JSON body of a ``POST /predict`` for ``texts``."""
    return {"instances": list(texts), "parameters": parameters.as_json()}


def encode_predictions(
    predictions: Sequence[Prediction], model: str, model_digest: str | None
) -> dict[str, Any]:
    """The JSON body of a 200 answer: one prediction per instance, in instance order.

    The model server's backends answer ``Prediction`` values, the type ``decode_predictions``
    gives the client back. ``model_digest`` None is written as null, which
    ``decode_model_digest`` reads as "none reported", like an answer without the key;
    ``decode_predictions`` and ``decode_model`` read the rest back.
    """
    return {
        "predictions": [prediction.as_json() for prediction in predictions],
        "model": model,
        "model_digest": model_digest,
    }


def decode_predictions(body: object, expected: int) -> list[Prediction]:
    """The predictions of a 200 answer; ``ValueError`` when its shape is not the contract's."""
    items = body.get("predictions") if isinstance(body, Mapping) else None
    if not isinstance(items, list) or len(items) != expected:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise ValueError(f"answered {got} predictions for {expected} texts")
    return [
        Prediction(
            sequence=item["sequence"],
            labels=list(item["labels"]),
            scores=[float(s) for s in item["scores"]],
        )
        for item in items
    ]


def decode_model(body: object) -> str:
    """The ``model`` a 200 answer names: the id of the model that made its predictions.

    It is the lineage key of stored predictions, so an answer without it is refused
    (``ValueError``) rather than stored under a guessed name.
    """
    model = body.get("model") if isinstance(body, Mapping) else None
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f'answered without a model id ("model": {model!r})')
    return model


def decode_model_digest(body: object) -> str | None:
    """The ``model_digest`` of a 200 answer; None from a server that does not report one.

    ``ValueError`` when it is there but not a ``sha256:<64 hex digits>`` string.
    """
    digest = body.get("model_digest") if isinstance(body, Mapping) else None
    if digest is None:
        return None
    if not (
        isinstance(digest, str)
        and digest.startswith(MODEL_DIGEST_PREFIX)
        and len(digest) == len(MODEL_DIGEST_PREFIX) + 64
        and all(c in "0123456789abcdef" for c in digest[len(MODEL_DIGEST_PREFIX) :])
    ):
        raise ValueError(f"answered a malformed model digest {digest!r:.100}")
    return digest


def decode_instance_errors(body: object) -> list[InstanceError]:
    """The ``instance_errors`` of a refusal; empty when the whole request was at fault."""
    items = body.get("instance_errors") if isinstance(body, Mapping) else None
    if not isinstance(items, list):
        return []
    return [
        InstanceError(index=int(item["index"]), reason=str(item["reason"]))
        for item in items
        if isinstance(item, Mapping) and isinstance(item.get("index"), int)
    ]


def encode_refusal(error: str, instance_errors: Sequence[InstanceError] = ()) -> dict[str, Any]:
    """The JSON body of a 4xx answer."""
    body: dict[str, Any] = {"error": error}
    if instance_errors:
        body["instance_errors"] = [{"index": e.index, "reason": e.reason} for e in instance_errors]
    return body
