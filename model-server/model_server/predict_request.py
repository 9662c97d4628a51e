"""Parsing and checking a /predict body before any of it reaches a model batch.

Everything a request can get wrong is found here, so a bad request is answered on its own with
a clear 4xx and never joins (or breaks) a batch shared with other requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from batchinfer_protocol.zero_shot import (
    ParameterError,
    check_hypothesis_template,
    check_label_descriptions,
    check_labels,
)
from model_server.backends.base import Instance
from model_server.settings import ServerSettings

KNOWN_PARAMETERS = frozenset(
    {"candidate_labels", "multi_label", "hypothesis_template", "label_descriptions"}
)


class RequestError(Exception):
    """A request the server refuses, with the HTTP status and a message for the client."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class Parameters:
    labels: tuple[str, ...]
    multi_label: bool
    hypothesis_template: str | None
    # Per candidate label, in the labels' order: its descriptions, () when the request gave none.
    label_descriptions: tuple[tuple[str, ...], ...]


def parse_predict_request(body: bytes, settings: ServerSettings) -> list[Instance]:
    """The instances of a /predict body, or a RequestError saying what is wrong with it."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
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
    return [
        Instance(
            text=instance_text(instance, index, settings.model_max_text_chars),
            labels=parameters.labels,
            multi_label=parameters.multi_label,
            hypothesis_template=parameters.hypothesis_template,
            label_descriptions=parameters.label_descriptions,
        )
        for index, instance in enumerate(instances)
    ]


def instance_text(instance: Any, index: int, max_chars: int) -> str:
    """The text of one instance: a string, or an object with a string "text"."""
    text = instance.get("text") if isinstance(instance, dict) else instance
    if not isinstance(text, str):
        raise RequestError(
            422, f"instances[{index}] must be a string or {{'text': string}}, got {instance!r:.80}"
        )
    if not text.strip():
        raise RequestError(422, f"instances[{index}] has an empty text")
    if len(text) > max_chars:
        raise RequestError(
            422,
            f"instances[{index}] has {len(text)} characters; the limit is {max_chars} "
            "(MODEL_MAX_TEXT_CHARS)",
        )
    return text


def parse_parameters(raw: Any, settings: ServerSettings) -> Parameters:
    """Request parameters with the server's defaults filled in."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError(422, f"'parameters' must be an object, got {raw!r:.80}")
    unknown = sorted(set(raw) - KNOWN_PARAMETERS)
    if unknown:
        raise RequestError(
            422, f"unknown parameters {unknown}; known are {sorted(KNOWN_PARAMETERS)}"
        )
    multi_label = raw.get("multi_label", False)
    if not isinstance(multi_label, bool):
        raise RequestError(422, f"'multi_label' must be true or false, got {multi_label!r}")
    labels = parse_labels(raw.get("candidate_labels", settings.default_labels), settings)
    return Parameters(
        labels=labels,
        multi_label=multi_label,
        hypothesis_template=parse_template(raw.get("hypothesis_template")),
        label_descriptions=parse_label_descriptions(raw.get("label_descriptions"), labels),
    )


def parse_labels(raw: Any, settings: ServerSettings) -> tuple[str, ...]:
    """Candidate labels as a list, or a comma-separated string as the pipeline accepts."""
    if isinstance(raw, str):
        raw = [label.strip() for label in raw.split(",") if label.strip()]
    if not isinstance(raw, list) or not all(isinstance(label, str) for label in raw):
        raise RequestError(422, f"'candidate_labels' must be a list of strings, got {raw!r:.80}")
    try:
        return check_labels(raw, max_labels=settings.model_max_labels)
    except ParameterError as error:
        raise RequestError(422, f"'candidate_labels': {error}") from error


def parse_template(raw: Any) -> str | None:
    """A hypothesis template with one slot for the label, or None for the default."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise RequestError(422, f"'hypothesis_template' must be a string, got {raw!r:.80}")
    try:
        return check_hypothesis_template(raw)
    except ParameterError as error:
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
    except ParameterError as error:
        raise RequestError(422, f"'label_descriptions': {error}") from error
    return tuple(descriptions.get(label, ()) for label in labels)
