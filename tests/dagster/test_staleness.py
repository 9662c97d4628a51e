"""Stale predictions through the real model server, with two label-description sets.

An edited record makes only its own prediction stale; a change of label descriptions makes
every prediction stale; ``predict --stale`` asks for exactly the stale ones, once, through the
queue, and the runs replace exactly those, keeping the earlier answers as non-current rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner, Result
from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.cli import cli
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.model_server import EMBEDDING_MODEL

TEXTS = [
    "The app crashes when I open it on my phone.",
    "I was charged twice this month, please refund me.",
    "The checkout page of your website does not load.",
    "I cannot log in, the password reset email never arrives.",
    "Where can I download my invoice?",
    "The button on the home page is broken in Firefox.",
]
DESCRIPTIONS_A = {"billing": ["Charges, invoices and refunds."]}
DESCRIPTIONS_B = {"billing": ["Money matters: payments, prices, invoices and refunds."]}
NOT_STALE = {"stale": 0, "text": 0, "parameters": 0, "model": 0, "unknown_receipt": 0}


def cli_env(settings: Settings) -> dict[str, str]:
    """The variables that make the CLI use ``settings``' database, queue, model and labels."""
    env = {
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "BATCHINFER_QUEUE": settings.queue,
        "BATCHINFER_MODEL_URL": settings.model_url,
        "BATCHINFER_BATCH_SIZE": str(settings.batch_size),
    }
    if settings.label_descriptions_file is not None:
        env["BATCHINFER_LABEL_DESCRIPTIONS_FILE"] = str(settings.label_descriptions_file)
    return env


def run(settings: Settings, *args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), env=cli_env(settings), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def last_json(result: Result) -> dict:
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def stale(settings: Settings) -> dict[str, int]:
    counts = last_json(run(settings, "status"))["stale_predictions"]
    assert counts.pop("model_checked") is True  # the model server said which model it serves
    return counts


def settings_with(base: Settings, tmp_path: Path, name: str, descriptions: dict) -> Settings:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(descriptions))
    return base.model_copy(update={"label_descriptions_file": path})


def current_rows(settings: Settings) -> dict[int, sa.Row]:
    return {r.record_id: r for r in rows(settings, db.predictions, db.predictions.c.is_current)}


def test_an_edit_makes_its_record_stale_and_a_new_label_set_makes_all_stale(
    app_settings: Settings, model_server_url: str, instance: DagsterInstance, tmp_path: Path
) -> None:
    base = app_settings.model_copy(update={"model_url": model_server_url, "batch_size": 8})
    settings_a = settings_with(base, tmp_path, "a", DESCRIPTIONS_A)
    settings_b = settings_with(base, tmp_path, "b", DESCRIPTIONS_B)
    engine = engine_of(settings_a)
    ids = add_records(engine, TEXTS)
    run(settings_a, "import-data")
    run(settings_a, "predict", *map(str, ids))
    run_daemon_loop(instance, settings_a, expect=len(ids))
    assert stale(settings_a) == {"current": 6, **NOT_STALE}
    first = current_rows(settings_a)
    assert sorted(first) == ids
    assert {r.model for r in first.values()} == {EMBEDDING_MODEL}

    edited = ids[2]
    run(settings_a, "edit-data-point", str(edited), "My phone shows a blank screen in the app.")
    # Not stale until the import moved the edit: a run would still read the old text.
    assert stale(settings_a) == {"current": 6, **NOT_STALE}
    run(settings_a, "import-data")
    assert stale(settings_a) == {"current": 6, **NOT_STALE, "stale": 1, "text": 1}

    asked = last_json(run(settings_a, "predict", "--stale"))
    assert asked == {"stale_requested": 1, "already_requested": 0, "model_checked": True}
    again = last_json(run(settings_a, "predict", "--stale"))  # idempotent until it lands
    assert again == {"stale_requested": 0, "already_requested": 1, "model_checked": True}
    run_daemon_loop(instance, settings_a, expect=len(ids) + 1)

    second = current_rows(settings_a)
    assert second[edited].sequence == "My phone shows a blank screen in the app."
    assert second[edited].run_id != first[edited].run_id
    # Every other record was predicted once: same run, same time, same answer.
    for record_id in ids:
        if record_id != edited:
            assert second[record_id]._mapping == first[record_id]._mapping
    assert len(rows(settings_a, db.predictions)) == 6  # same configuration: replaced in place
    assert stale(settings_a) == {"current": 6, **NOT_STALE}

    # Other label descriptions: every prediction is stale, by its parameters.
    assert stale(settings_b) == {"current": 6, **NOT_STALE, "stale": 6, "parameters": 6}
    asked = last_json(run(settings_b, "predict", "--stale"))
    assert asked == {"stale_requested": 6, "already_requested": 0, "model_checked": True}
    run_daemon_loop(instance, settings_b, expect=len(ids) * 2 + 1)
    assert stale(settings_b) == {"current": 6, **NOT_STALE}
    third = current_rows(settings_b)
    assert {r.configuration for r in third.values()} != {r.configuration for r in second.values()}
    # The earlier answers stay, no longer current: 6 records x 2 configurations.
    assert len(rows(settings_b, db.predictions)) == 12
    # Seen from the first configuration, the new answers are stale in turn.
    assert stale(settings_a)["parameters"] == 6

    lineage = last_json(run(settings_b, "lineage", str(edited)))
    assert lineage["record"]["text"] == "My phone shows a blank screen in the app."
    now, before = lineage["predictions"]
    assert (now["current"], now["stale"], before["current"]) == (True, [], False)
    assert now["receipt"]["label_descriptions"] == DESCRIPTIONS_B
    assert before["receipt"]["label_descriptions"] == DESCRIPTIONS_A
    assert now["receipt"]["text_digest"] == before["receipt"]["text_digest"]
    assert lineage["record"]["imported_text_digest"] == now["receipt"]["text_digest"]
    assert now["receipt"]["model"] == EMBEDDING_MODEL
    assert now["receipt"]["run_id"] == third[edited].run_id
