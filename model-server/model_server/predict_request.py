"""Parsing and checking a /predict body before any of it reaches a model batch.

Everything a request can get wrong is found here, so a bad request is answered on its own with
a clear 4xx and never joins (or breaks) a batch shared with other requests.
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
    check_hypothesis_template,
    check_label_descriptions,
    check_labels,
    encode_refusal,
)
from model_server.backends.base import Instance
from model_server.settings import ServerSettings

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
class Parameters:
    labels: tuple[str, ...]
    multi_label: bool
    hypothesis_template: str | None
    # Per candidate label, in the labels' order: its descriptions, () when the request gave none.
    label_descriptions: tuple[tuple[str, ...], ...]
    # Per candidate label, what the model reads of it; () when no label is cut.
    label_texts: tuple[str, ...]


def parse_predict_request(body: bytes, settings: ServerSettings) -> list[Instance]:
    """The instances of a /predict body, or a RequestError saying what is wrong with it.

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
    if len(instances) > settings.model_max_instances:
        raise RequestError(
            413,
            f"{len(instances)} instances in one request; the limit is "
            f"{settings.model_max_instances} (MODEL_MAX_INSTANCES): split the request",
        )
    parameters = parse_parameters(payload.get("parameters"), settings)
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
    return [
        Instance(
            text=text,
            labels=parameters.labels,
            multi_label=parameters.multi_label,
            hypothesis_template=parameters.hypothesis_template,
            label_descriptions=parameters.label_descriptions,
            label_texts=parameters.label_texts,
        )
        for text in texts
    ]


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


def parse_parameters(raw: Any, settings: ServerSettings) -> Parameters:
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
    labels = parse_labels(raw.get("candidate_labels", settings.default_labels), settings)
    return Parameters(
        labels=labels,
        multi_label=multi_label,
        hypothesis_template=parse_template(raw.get("hypothesis_template")),
        label_descriptions=parse_label_descriptions(raw.get("label_descriptions"), labels),
        label_texts=label_texts(labels, settings.model_max_label_chars),
    )


def label_texts(labels: tuple[str, ...], max_chars: int) -> tuple[str, ...]:
    """What the model reads of each label: its first ``max_chars`` characters; () if none is cut.

    A label is cut before any template is formatted with it: the embedding backend formats each
    label into ten templates and tokenizes them all, the NLI backend pairs it with every text, so
    64 labels of 150 KB held the model for ~55 s although the model reads at most 256 or 512
    tokens of each. The answer keeps the whole labels; two labels equal in their first
    ``max_chars`` characters get equal scores.
    """
    if all(len(label) <= max_chars for label in labels):
        return ()
    return tuple(label[:max_chars] for label in labels)


def parse_labels(raw: Any, settings: ServerSettings) -> tuple[str, ...]:
    """Candidate labels as a list, or a comma-separated string as the pipeline accepts."""
    if isinstance(raw, str):
        raw = [label.strip() for label in raw.split(",") if label.strip()]
    if not isinstance(raw, list) or not all(isinstance(label, str) for label in raw):
        raise RequestError(422, f"'candidate_labels' must be a list of strings, got {brief(raw)}")
    try:
        for label in raw:
            check_encodable(label, "a candidate label")
        return check_labels(raw, max_labels=settings.model_max_labels)
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


def parse_label_descriptions(raw: Any, labels: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The descriptions of each candidate label, aligned with ``labels``; () for a label without.

    Entries for labels that are not candidates are checked and dropped, so a client can send
    one deployment-wide object with every request.
    """
    if raw is None:
        return tuple(() for _ in labels)
    try:
        descriptions = check_label_descriptions(raw)
        for label_descriptions in descriptions.values():
            for description in label_descriptions:
                check_encodable(description, "a label description")
    except (ParameterError, ValueError) as error:
        raise RequestError(422, f"'label_descriptions': {error}") from error
    return tuple(descriptions.get(label, ()) for label in labels)
