"""BATCHINFER_LABEL_DESCRIPTIONS_FILE: read, checked, and sent to the real model server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchinfer_dagster.defs.deployments import model_server_for
from batchinfer_dagster.settings import Settings, SettingsError

# Names that mean nothing to the model: only the file's descriptions can tell them apart.
DESCRIPTIONS = {
    "kind A": ["A question about a charge, a refund or an invoice."],
    "kind B": ["The mobile app crashes or freezes."],
    "unused": ["A label the deployment knows but this run does not ask for."],
}


def settings_with_file(tmp_path: Path, content: str, **overrides: object) -> Settings:
    path = tmp_path / "label_descriptions.json"
    path.write_text(content)
    return Settings(home=tmp_path, label_descriptions_file=path, **overrides)


def test_the_file_becomes_the_request_parameter(tmp_path: Path) -> None:
    settings = settings_with_file(
        tmp_path, json.dumps(DESCRIPTIONS), labels=("kind A", "kind B", "plain")
    )
    assert model_server_for(settings).parameters().as_json() == {
        "candidate_labels": ["kind A", "kind B", "plain"],
        "multi_label": False,
        "label_descriptions": {"kind A": DESCRIPTIONS["kind A"], "kind B": DESCRIPTIONS["kind B"]},
    }


def test_without_a_file_no_descriptions_and_no_template_are_sent(tmp_path: Path) -> None:
    body = model_server_for(Settings(home=tmp_path)).parameters().as_json()
    assert set(body) == {"candidate_labels", "multi_label"}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "Expecting property name"),
        (json.dumps(["kind A"]), "must be an object"),
        (json.dumps({"kind A": [""]}), "descriptions of 'kind A' contain an empty one"),
    ],
)
def test_a_bad_file_is_named_with_the_reason(tmp_path: Path, content: str, reason: str) -> None:
    """Refused when the settings load, not by every request of every run."""
    with pytest.raises(SettingsError, match="BATCHINFER_LABEL_DESCRIPTIONS_FILE=") as refused:
        settings_with_file(tmp_path, content)
    assert reason in str(refused.value)
    assert str(tmp_path / "label_descriptions.json") in str(refused.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="absent.json"):
        Settings(home=tmp_path, label_descriptions_file=tmp_path / "absent.json")


@pytest.mark.parametrize("template", ["This text is about {{}}.", "No slot.", "{0} {1}"])
def test_a_template_without_a_real_slot_is_refused_at_startup(template: str) -> None:
    with pytest.raises(SettingsError, match="BATCHINFER_HYPOTHESIS_TEMPLATE"):
        Settings(hypothesis_template=template)


def test_the_model_server_classifies_by_the_files_descriptions(
    tmp_path: Path, model_server_url: str
) -> None:
    settings = settings_with_file(
        tmp_path,
        json.dumps(DESCRIPTIONS),
        labels=("kind A", "kind B"),
        model_url=model_server_url,
    )
    model_server = model_server_for(settings)
    with model_server.open() as client:
        answer = client.predict(
            ["I was billed twice for one order.", "The app closes itself when I open it."],
            model_server.parameters(),
        )
    assert [prediction.labels[0] for prediction in answer.predictions] == ["kind A", "kind B"]
