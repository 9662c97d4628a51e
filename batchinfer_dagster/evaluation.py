"""Accuracy on the user's own labelled texts: reading them, and the metrics of the answers.

``batchinfer evaluate FILE`` reads ``(text, label)`` pairs from a CSV (columns ``text`` and
``label``) or JSONL (fields ``text`` and ``label``) file, has the model server classify the texts
with the deployment's parameters, and reports accuracy, per-label precision and recall, and the
confusion matrix (true label → predicted label → count). The predicted label is the top one
(``labels[0]``), as ``status``'s label distribution counts it.

Definitions (scikit-learn's ``precision_recall_fscore_support`` with ``zero_division=0``):
precision of L = texts predicted L that are L / texts predicted L; recall of L = texts labelled
L predicted L / texts labelled L; either is 0 when its denominator is. A file label that is not a
candidate label can never be predicted: it is counted (recall 0) and named in
``labels_not_candidates``. A text the server refuses is reported with its line and left out of
every figure.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchinfer_dagster.records import (
    FILE_ENCODING,
    MAX_CSV_FIELD_CHARS,
    InvalidRecordError,
    check_text,
    first_undecodable_byte,
)


@dataclass(frozen=True)
class LabelledText:
    """One example of the file: its text, its true label, and where it is (for errors)."""

    text: str
    label: str
    where: str


def _label(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecordError(f"{where}: needs a non-empty 'label'")
    return value.strip()


def _read_csv(path: Path) -> Iterator[LabelledText]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_FIELD_CHARS))
    with path.open(newline="", encoding=FILE_ENCODING) as handle:
        reader = csv.DictReader(handle)
        try:
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise InvalidRecordError(
                    f"{path}: needs 'text' and 'label' columns (columns: "
                    f"{reader.fieldnames!r:.300})"
                )
            for row in reader:
                where = f"{path}:{reader.line_num}"
                text = check_text(row["text"] or "", where)
                yield LabelledText(text, _label(row["label"], where), where)
        except csv.Error as error:
            raise InvalidRecordError(f"{path}:{reader.line_num}: not CSV ({error})") from None


def _read_jsonl(path: Path) -> Iterator[LabelledText]:
    with path.open(encoding=FILE_ENCODING) as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line}"
            try:
                item = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise InvalidRecordError(f"{where}: not JSON ({exc})") from None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise InvalidRecordError(f"{where}: needs a string field 'text'")
            yield LabelledText(
                check_text(item["text"], where), _label(item.get("label"), where), where
            )


def read_labelled(path: Path) -> list[LabelledText]:
    """Every example of a ``.csv`` or ``.jsonl`` file, checked before anything is sent."""
    if not path.is_file():
        raise InvalidRecordError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = _read_csv
    elif suffix in {".jsonl", ".ndjson"}:
        reader = _read_jsonl
    else:
        raise InvalidRecordError(f"{path}: unknown format {suffix!r}; use .csv or .jsonl")
    try:
        examples = list(reader(path))
    except UnicodeDecodeError as error:
        raise InvalidRecordError(
            f"{path}: not UTF-8 ({error.reason} at byte {first_undecodable_byte(path)})"
        ) from None
    if not examples:
        raise InvalidRecordError(f"{path}: no examples")
    return examples


@dataclass(frozen=True)
class Evaluation:
    """The figures of one evaluation; ``as_json`` is what the command prints."""

    examples: int
    correct: int
    confusion: dict[str, dict[str, int]]
    labels: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else 0.0

    def precision_recall(self) -> dict[str, dict[str, float | int]]:
        """Per label: precision, recall and support (texts labelled with it)."""
        predicted = Counter()
        for row in self.confusion.values():
            predicted.update(row)
        figures: dict[str, dict[str, float | int]] = {}
        for label in self.labels:
            hits = self.confusion.get(label, {}).get(label, 0)
            support = sum(self.confusion.get(label, {}).values())
            figures[label] = {
                "precision": hits / predicted[label] if predicted[label] else 0.0,
                "recall": hits / support if support else 0.0,
                "support": support,
            }
        return figures

    def as_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "accuracy": self.accuracy,
            "per_label": self.precision_recall(),
            "confusion": self.confusion,
        }


def evaluate(pairs: Sequence[tuple[str, str]], candidate_labels: Sequence[str]) -> Evaluation:
    """The figures of ``(true label, predicted label)`` pairs.

    ``labels`` of the result are the candidates, then the file's other labels (sorted), so the
    report names every label that occurs.
    """
    confusion: dict[str, dict[str, int]] = {}
    for true, predicted in pairs:
        row = confusion.setdefault(true, {})
        row[predicted] = row.get(predicted, 0) + 1
    others = sorted({true for true, _ in pairs} - set(candidate_labels))
    return Evaluation(
        examples=len(pairs),
        correct=sum(1 for true, predicted in pairs if true == predicted),
        confusion=confusion,
        labels=(*candidate_labels, *others),
    )
