"""What the model reads for a label: its descriptions, or its name put into templates.

A bare label ("mobile") embeds poorly: a sentence model needs to hear how people talk about it.
A label can therefore carry descriptions, in the form of the ``label_descriptions`` request
parameter (``{label: [description, ...]}``). The default labels' descriptions ship with the
server as data in that same form (``label_descriptions.json``); they were written from each
label's meaning, in a customer's words, not copied from the evaluation sets in bench/data.

A label's name is read in several hypothesis templates whose embeddings are averaged (prompt
ensembling, Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", §3.1.4): one template's wording biases the vector, the average keeps what they
share, the label's meaning. A description is read twice: whole, and cut into its phrases
("Renting a car: pickup, return, the vehicle" gives "Renting a car", "pickup", "return", "the
vehicle"), each phrase in PHRASE_TEMPLATE. A small sentence model matches a message on its key
nouns; a one-line description lists them, and its whole-sentence embedding blurs them. A
described label is the names, the descriptions and the phrases in equal parts
(label_fit.LabelVector). These choices were made on a development set of their own
(bench/data/helpdesk_messages.jsonl) and the default labels' set, before the travel set was
measured with them; bench/bench_zero_shot.py reports every alternative tried on all three.
"""

from __future__ import annotations

import functools
import json
import re
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
    "I need help with {}.",
    "This is a request about {}.",
    "Something is wrong with my {}.",
    "Category: {}.",
    "A customer writes about {}.",
)
# How each phrase of a description is read.
PHRASE_TEMPLATE = "This message is about {}."
# Where a description is cut into phrases: punctuation that separates items of a list, and the
# words that join its last two.
PHRASE_BOUNDARY = re.compile(r"[,:;.]| and | or ")
# Phrases embedded per label, the first ones kept. The shipped labels have at most 23; without a
# bound, 16 descriptions of 1,000 characters of comma-separated words gave 2,400 sentences
# (32k tokens) per label, 2.0M tokens of embedding for one 64-label request.
MAX_PHRASES_PER_LABEL = 64


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
    """The sentences that stand for a label: its name in templates, its descriptions, and the
    descriptions' phrases in PHRASE_TEMPLATE (empty without descriptions)."""

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    phrases: tuple[str, ...] = ()


def description_phrases(descriptions: tuple[str, ...]) -> tuple[str, ...]:
    """The distinct phrases of ``descriptions``, in order, each in PHRASE_TEMPLATE.

    "Passports, visas and entry requirements." gives the sentences about "Passports", "visas"
    and "entry requirements". A description with no boundary gives itself as one phrase. At
    most MAX_PHRASES_PER_LABEL, the first.
    """
    phrases = (
        phrase.strip()
        for description in descriptions
        for phrase in PHRASE_BOUNDARY.split(f" {description} ")
    )
    distinct = dict.fromkeys(PHRASE_TEMPLATE.format(phrase) for phrase in phrases if phrase)
    return tuple(distinct)[:MAX_PHRASES_PER_LABEL]


def label_prototypes(
    label: str, descriptions: tuple[str, ...], template: str | None
) -> LabelPrototypes:
    """What the embedding backend embeds for ``label``.

    Names: the label in the request's hypothesis template, or in every bare-label template.
    Descriptions: the request's, else the shipped ones of a default label, else none; and
    their phrases.
    """
    names = (template,) if template is not None else BARE_LABEL_TEMPLATES
    described = descriptions or packaged_label_descriptions().get(label_key(label), ())
    return LabelPrototypes(
        names=tuple(name.format(label) for name in names),
        descriptions=described,
        phrases=description_phrases(described),
    )


def read_label_descriptions_file(path: Path) -> dict[str, tuple[str, ...]]:
    """A descriptions file (the ``label_descriptions`` object as JSON), checked."""
    return parse_label_descriptions(path.read_text(encoding="utf-8"), str(path))
