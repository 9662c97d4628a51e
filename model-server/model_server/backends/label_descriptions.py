"""What the model reads for a label: its descriptions, or its name put into templates.

A bare label ("mobile") embeds poorly: a sentence model needs to hear how people talk about it.
A label can therefore carry descriptions, in the form of the ``label_descriptions`` request
parameter (``{label: [description, ...]}``). The default labels' descriptions ship with the
server as data in that same form (``label_descriptions.json``); they were written from each
label's meaning, in a customer's words, not copied from the evaluation sets in bench/data.

A label's name is read in several hypothesis templates whose embeddings are averaged (prompt
ensembling, Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", §3.1.4): one template's wording biases the vector, the average keeps what they
share, the label's meaning. A described label is the name and the descriptions in equal parts
(label_fit.LabelVector). bench/bench_zero_shot.py measures each choice.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from batchinfer_protocol.zero_shot import ParameterError, check_label_descriptions

PACKAGED_DESCRIPTIONS = "label_descriptions.json"

# Phrasings of "a message about <label>"; each must hold exactly one "{}".
BARE_LABEL_TEMPLATES: tuple[str, ...] = (
    "{}",
    "This message is about {}.",
    "A question about {}.",
    "I have a problem with {}.",
    "Topic: {}.",
)


def parse_label_descriptions(text: str, source: str) -> dict[str, tuple[str, ...]]:
    """``{label: (description, ...)}`` from JSON text; ``ValueError`` naming ``source``."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from error
    try:
        return check_label_descriptions(raw)
    except ParameterError as error:
        raise ValueError(f"{source}: {error}") from error


@functools.cache
def packaged_label_descriptions() -> dict[str, tuple[str, ...]]:
    """The shipped descriptions, keyed by the label in lower case without outer spaces."""
    data = resources.files(__package__).joinpath(PACKAGED_DESCRIPTIONS)
    descriptions = parse_label_descriptions(data.read_text(encoding="utf-8"), str(data))
    return {label_key(label): texts for label, texts in descriptions.items()}


def label_key(label: str) -> str:
    """How a label is matched against the shipped descriptions: "Billing " is "billing"."""
    return label.strip().lower()


@dataclass(frozen=True)
class LabelPrototypes:
    """The sentences that stand for a label: its name in templates, and its descriptions."""

    names: tuple[str, ...]
    descriptions: tuple[str, ...]


def label_prototypes(
    label: str, descriptions: tuple[str, ...], template: str | None
) -> LabelPrototypes:
    """What the embedding backend embeds for ``label``.

    Names: the label in the request's hypothesis template, or in every bare-label template.
    Descriptions: the request's, else the shipped ones of a default label, else none.
    """
    names = (template,) if template is not None else BARE_LABEL_TEMPLATES
    return LabelPrototypes(
        names=tuple(name.format(label) for name in names),
        descriptions=descriptions or packaged_label_descriptions().get(label_key(label), ()),
    )


def read_label_descriptions_file(path: Path) -> dict[str, tuple[str, ...]]:
    """A descriptions file (the ``label_descriptions`` object as JSON), checked."""
    return parse_label_descriptions(path.read_text(encoding="utf-8"), str(path))
