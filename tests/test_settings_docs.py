"""The configuration tables in the docs are ``Settings`` itself, rendered: they cannot drift.

A default, a bound or a variable name is written once, in ``batchinfer_dagster/settings.py``;
docs/architecture.md and the README carry the table ``markdown_table`` renders from the fields.
"""

from __future__ import annotations

import pytest

from batchinfer_dagster.settings import (
    TABLE_END,
    TABLE_START,
    Settings,
    described,
    markdown_table,
    variable_of,
    with_table,
)
from batchinfer_testing.model_server import REPO_ROOT


@pytest.mark.parametrize("document", ["docs/architecture.md", "README.md"])
def test_the_documents_carry_the_table_rendered_from_settings(document: str) -> None:
    text = (REPO_ROOT / document).read_text(encoding="utf-8")
    assert with_table(text) == text, (
        f"{document}'s settings table differs from Settings: run "
        f"`python -m batchinfer_dagster.settings --write {document}`"
    )


def test_the_table_has_a_row_per_setting_with_its_default_and_bounds() -> None:
    table = markdown_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    assert "| `BATCHINFER_BATCH_SIZE` | `4096` | ≥ 1 |" in table
    assert "| `BATCHINFER_MODEL_RETRIES` | `3` | ≥ 0 |" in table
    assert "| `BATCHINFER_QUEUE` | `local` | `local`, `pubsub` |" in table
    assert "| `PUBSUB_EMULATOR_HOST` | unset |" in table


def test_a_changed_default_changes_the_rendered_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO_ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    monkeypatch.setattr(Settings.model_fields["max_pull"], "default", 5001)
    assert "| `BATCHINFER_MAX_PULL` | `5001` |" in with_table(text)
    assert with_table(text) != text


def test_a_document_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="settings table"):
        with_table(f"{TABLE_START}\nno end marker")
    assert with_table(f"a\n{TABLE_START}\nold\n{TABLE_END}\nb").endswith(f"{TABLE_END}\nb")


def test_variables_and_resource_descriptions_come_from_the_fields() -> None:
    assert variable_of("pubsub_emulator_host") == "PUBSUB_EMULATOR_HOST"
    assert variable_of("dagster_home") == "DAGSTER_HOME"
    assert variable_of("model_retry_delay_seconds") == "BATCHINFER_MODEL_RETRY_DELAY_SECONDS"
    assert described("max_pull").endswith("(BATCHINFER_MAX_PULL)")
    with pytest.raises(KeyError):
        variable_of("no_such_setting")


def test_the_step_retry_knobs_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_MODEL_RETRIES", "0")
    monkeypatch.setenv("BATCHINFER_MODEL_RETRY_DELAY_SECONDS", "0.5")
    settings = Settings()
    assert (settings.model_retries, settings.model_retry_delay_seconds) == (0, 0.5)
