"""Decoding and checking a ``POST /predict`` body: the model server's side of ``encode_request``.

Everything a request can get wrong is found here, so a bad request is answered on its own with
a clear 4xx and never joins (or breaks) a model batch shared with other requests. It decodes to
the types the client encodes from (``PredictRequest`` holds the texts and a ``PredictParameters``),
so one module of the protocol is read by both sides: ``tests/fast/test_wire_contract.py`` sends a
request through the client's encoding and this decoding, and an answer back.

The server's own bounds and default labels come in as ``RequestLimits`` (the model server builds
it from its settings); the status codes are the contract's (``zero_shot``'s docstring).
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchinfer_protocol.zero_shot import (
    MAX_DESCRIPTION_CHARS,
    InstanceError,
    ParameterError,
    PredictParameters,
    check_hypothesis_template,
    check_label_descriptions,
    check_labels,
    encode_refusal,
)

KNOWN_PARAMETERS = frozenset(
    {"candidate_labels", "multi_label", "hypothesis_template", "label_descriptions"}
)

# A value shown in an error message: bounded in depth and length (a client's value can be
# nested hundreds of levels deep, and ``repr`` recurses as deep as the value).
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 3, 80, 80, 40


def brief(value: Any) -> str:
    """A short repr of a client's value for an error message."""
    return _BRIEF.repr(value)


class RequestError(Exception):
    """A request the server refuses, with the HTTP status and a message for the client.

    ``instance_errors`` name the instances that alone caused the refusal (the protocol's
    refusal body), so the client can resend the others.
    """

    def __init__(
        self, status_code: int, message: str, instance_errors: Sequence[InstanceError] = ()
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.instance_errors = list(instance_errors)

    def body(self) -> dict[str, Any]:
        """The protocol's refusal body."""
        return encode_refusal(self.message, self.instance_errors)


def check_encodable(text: str, where: str) -> str:
    """``text`` when it can be encoded as UTF-8; JSON escapes can name lone surrogates.

    A lone surrogate (``"\\ud800"``) parses fine but fails the tokenizer and the JSON answer,
    which would fail the whole model batch it shares with other requests.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} is not valid Unicode ({error.reason} at character {error.start})"
        ) from None
    return text


@dataclass(frozen=True)
class RequestLimits:
    """What a server accepts in one request, and the labels it uses when a request names none.

    Every field is required: the model server builds it from its settings (``MODEL_MAX_*``,
    ``MODEL_DEFAULT_LABELS``), the one place their defaults are written.
    """

    max_instances: int
    max_labels: int
    default_labels: tuple[str, ...]


@dataclass(frozen=True)
class PredictRequest:
    """A decoded ``POST /predict``: the texts in instance order, and the request's parameters
    with the server's defaults filled in (``label_descriptions`` keeps the candidate labels'
    entries only)."""

    texts: list[str]
    parameters: PredictParameters


def decode_request(body: bytes, limits: RequestLimits) -> PredictRequest:
    """The texts and parameters of a /predict body, or a RequestError saying what is wrong.

    A malformed body is a 400, a well-formed one the server cannot serve a 413 or 422; instances
    wrong on their own are listed in ``instance_errors`` (422) so the client can resend the rest.
    A long text is legal: the backends truncate its tokens as the Hugging Face pipeline does.
    """
    try:
        payload = json.loads(body)
    except RecursionError:
        raise RequestError(400, "the body nests JSON too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, over 4300 digits
        raise RequestError(400, f"the body is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(payload).__name__}")
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RequestError(422, "'instances' must be a non-empty list of texts or {'text': ...}")
    if len(instances) > limits.max_instances:
        raise RequestError(
            413,
            f"{len(instances)} instances in one request; the limit is "
            f"{limits.max_instances} (MODEL_MAX_INSTANCES): split the request",
        )
    parameters = parse_parameters(payload.get("parameters"), limits)
    texts: list[str] = []
    errors: list[InstanceError] = []
    for index, instance in enumerate(instances):
        try:
            texts.append(instance_text(instance, index))
        except ValueError as error:
            errors.append(InstanceError(index, str(error)))
    if errors:
        raise RequestError(
            422,
            f"{len(errors)} of {len(instances)} instances refused, e.g. {errors[0].reason}; "
            "the others are valid: resend them without the instances in 'instance_errors'",
            errors,
        )
    return PredictRequest(texts=texts, parameters=parameters)


def instance_text(instance: Any, index: int) -> str:
    """The text of one instance: a string, or an object with a string "text".

    ``ValueError`` (the instance's refusal reason) when it is not a usable text.
    """
    text = instance.get("text") if isinstance(instance, dict) else instance
    if not isinstance(text, str):
        raise ValueError(
            f"instances[{index}] must be a string or {{'text': string}}, got {brief(instance)}"
        )
    if not text.strip():
        raise ValueError(f"instances[{index}] has an empty text")
    return check_encodable(text, f"instances[{index}]")


def parse_parameters(raw: Any, limits: RequestLimits) -> PredictParameters:
    """Request parameters with the server's defaults filled in."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError(422, f"'parameters' must be an object, got {brief(raw)}")
    unknown = sorted(set(raw) - KNOWN_PARAMETERS)
    if unknown:
        raise RequestError(
            422, f"unknown parameters {unknown}; known are {sorted(KNOWN_PARAMETERS)}"
        )
    multi_label = raw.get("multi_label", False)
    if not isinstance(multi_label, bool):
        raise RequestError(422, f"'multi_label' must be true or false, got {brief(multi_label)}")
    labels = parse_labels(raw.get("candidate_labels", list(limits.default_labels)), limits)
    return PredictParameters(
        candidate_labels=labels,
        multi_label=multi_label,
        hypothesis_template=parse_template(raw.get("hypothesis_template")),
        label_descriptions=parse_label_descriptions(raw.get("label_descriptions"), labels),
    )


def parse_labels(raw: Any, limits: RequestLimits) -> tuple[str, ...]:
    """Candidate labels as a list, or a comma-separated string as the pipeline accepts."""
    if isinstance(raw, str):
        raw = [label.strip() for label in raw.split(",") if label.strip()]
    if not isinstance(raw, list) or not all(isinstance(label, str) for label in raw):
        raise RequestError(422, f"'candidate_labels' must be a list of strings, got {brief(raw)}")
    try:
        for label in raw:
            check_encodable(label, "a candidate label")
        return check_labels(raw, max_labels=limits.max_labels)
    except (ParameterError, ValueError) as error:
        raise RequestError(422, f"'candidate_labels': {error}") from error


def parse_template(raw: Any) -> str | None:
    """A hypothesis template with one slot for the label, or None for the default."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise RequestError(422, f"'hypothesis_template' must be a string, got {brief(raw)}")
    if len(raw) > MAX_DESCRIPTION_CHARS:
        # Formatted once per label: a template is a hypothesis, bounded like a description.
        raise RequestError(
            422,
            f"'hypothesis_template' has {len(raw)} characters; the limit is "
            f"{MAX_DESCRIPTION_CHARS}, as for a label description",
        )
    try:
        return check_hypothesis_template(check_encodable(raw, "the hypothesis template"))
    except (ParameterError, ValueError) as error:
        raise RequestError(422, f"'hypothesis_template': {error}") from error


def parse_label_descriptions(raw: Any, labels: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The descriptions of the candidate labels that have some, as ``PredictParameters`` holds
    them (``PredictParameters.as_json`` sends the same entries).

    Entries for labels that are not candidates are checked and dropped, so a client can send
    one deployment-wide object with every request.
    """
    if raw is None:
        return {}
    try:
        descriptions = check_label_descriptions(raw)
        for label_descriptions in descriptions.values():
            for description in label_descriptions:
                check_encodable(description, "a label description")
    except (ParameterError, ValueError) as error:
        raise RequestError(422, f"'label_descriptions': {error}") from error
    return {label: descriptions[label] for label in labels if label in descriptions}
