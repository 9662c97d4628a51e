"""The metrics of `batchinfer evaluate` against a hand count, and its file reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchinfer_dagster.evaluation import evaluate, read_labelled
from batchinfer_dagster.records import InvalidRecordError

CANDIDATES = ("mobile", "website", "billing", "account access")


def test_figures_match_a_hand_count() -> None:
    pairs = [
        ("billing", "billing"),
        ("billing", "mobile"),
        ("mobile", "mobile"),
        ("website", "mobile"),
        ("other", "billing"),  # a label the model cannot answer
    ]
    figures = evaluate(pairs, CANDIDATES)
    assert figures.accuracy == pytest.approx(2 / 5)
    per_label = figures.precision_recall()
    # mobile: predicted 3 times, right once; labelled once, found once.
    assert per_label["mobile"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "support": 1}
    # billing: predicted twice (once for "other"), right once; labelled twice, found once.
    assert per_label["billing"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert per_label["website"] == {"precision": 0.0, "recall": 0.0, "support": 1}
    assert per_label["account access"] == {"precision": 0.0, "recall": 0.0, "support": 0}
    assert per_label["other"] == {"precision": 0.0, "recall": 0.0, "support": 1}
    assert figures.labels == (*CANDIDATES, "other")
    assert figures.confusion == {
        "billing": {"billing": 1, "mobile": 1},
        "mobile": {"mobile": 1},
        "website": {"mobile": 1},
        "other": {"billing": 1},
    }


def test_csv_and_jsonl_are_read_and_a_bad_line_is_named(tmp_path: Path) -> None:
    csv_file = tmp_path / "l.csv"
    csv_file.write_text('text,label\n"my bill, again",billing\nthe app,mobile\n')
    assert [(e.text, e.label) for e in read_labelled(csv_file)] == [
        ("my bill, again", "billing"),
        ("the app", "mobile"),
    ]
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text('{"text": "a", "label": "billing"}\n{"text": "b"}\n')
    with pytest.raises(InvalidRecordError, match=r"l.jsonl:2: needs a non-empty 'label'"):
        read_labelled(jsonl)
    no_label_column = tmp_path / "n.csv"
    no_label_column.write_text("text\nx\n")
    with pytest.raises(InvalidRecordError, match="needs 'text' and 'label' columns"):
        read_labelled(no_label_column)
