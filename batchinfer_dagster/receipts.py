"""Where a prediction came from: its configuration's identity and the digest of its text.

A *prediction configuration* is everything that decides an answer except the text: the model the
server reported (its id and the digest of its weights), the candidate labels, the hypothesis
template, the label descriptions that travel with the request, and ``multi_label``. Two
predictions of one text under one configuration are the same answer, so the configuration's
digest keys stored predictions beside the record id: a change of labels writes new rows and
never overwrites the answers made before it.

A *receipt* is the configuration plus what was classified and when: the text's digest, the run
and the ledger batch (columns of ``predictions`` beside the configuration's digest). Predictions
stored before receipts existed (migration 0005) keep a configuration marked unknown: one per
model id, as the old key was (record id, model).

Digests are SHA-256 of a canonical JSON (sorted keys, no spaces, UTF-8), hex: stable across
processes, Python versions and databases. Changing how a digest is computed makes every stored
prediction stale, so the rule here is frozen; migration 0005 copies the legacy one.

No Dagster and no client import: the domain owns these types.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Length of every digest here (SHA-256, hex): the width of the columns that hold one.
DIGEST_CHARS = 64
# The weights digest of a model server that does not report one (older servers, Vertex).
UNKNOWN = "unknown"


def canonical_digest(value: object) -> str:
    """SHA-256 hex of ``value`` as canonical JSON: sorted keys, compact, UTF-8."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def text_digest(text: str) -> str:
    """SHA-256 hex of the text's UTF-8 bytes (lone surrogates escaped, so any str digests)."""
    return hashlib.sha256(text.encode("utf-8", errors="backslashreplace")).hexdigest()


def legacy_configuration_digest(model: str) -> str:
    """The configuration of predictions stored before receipts: only the model id is known.

    Migration 0005 computes the same value inline (a migration never imports app code).
    """
    return canonical_digest({"legacy_model": model})


@dataclass(frozen=True)
class ModelIdentity:
    """The model that answered: the id the server reports and the digest of its weights.

    ``weights_digest`` is ``UNKNOWN`` when the server does not report one; two checkpoints under
    one path are then the same model, as they were before receipts.
    """

    name: str
    weights_digest: str = UNKNOWN


@dataclass(frozen=True)
class Parameters:
    """The request parameters that decide an answer (``PredictParameters``'s four fields).

    ``label_descriptions`` may hold labels that are not candidates (a deployment's file
    describes every label it knows); only the candidates' entries count, as only they travel.
    """

    candidate_labels: tuple[str, ...]
    hypothesis_template: str | None
    label_descriptions: Mapping[str, Sequence[str]]
    multi_label: bool

    def travelling_descriptions(self) -> dict[str, list[str]]:
        """``{label: [description, ...]}`` of the candidates that have any, as sent."""
        return {
            label: list(self.label_descriptions[label])
            for label in self.candidate_labels
            if self.label_descriptions.get(label)
        }

    @property
    def label_descriptions_digest(self) -> str:
        """Editing a non-candidate's entry changes no answer, so it changes no digest."""
        return canonical_digest(self.travelling_descriptions())

    def as_json(self) -> dict[str, Any]:
        return {
            "candidate_labels": list(self.candidate_labels),
            "hypothesis_template": self.hypothesis_template,
            "label_descriptions_digest": self.label_descriptions_digest,
            "multi_label": self.multi_label,
        }

    @property
    def digest(self) -> str:
        """What changes when labels, template, descriptions or ``multi_label`` change."""
        return canonical_digest(self.as_json())


@dataclass(frozen=True)
class Configuration:
    """A prediction configuration: the model and the parameters; its digest keys predictions."""

    model: ModelIdentity
    parameters: Parameters

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "model_digest": self.model.weights_digest,
            **self.parameters.as_json(),
        }

    @property
    def digest(self) -> str:
        return canonical_digest(self.as_json())
