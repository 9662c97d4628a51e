"""The `batchinfer` command through click's runner, on real databases and queues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from batchinfer_dagster import db
from batchinfer_dagster.cli import cli
from batchinfer_dagster.settings import Settings
from batchinfer_testing.cli_runner import lines, run, settings_env
from batchinfer_testing.deployment import drain, engine_of, open_queue
from batchinfer_testing.processes import free_port


def test_walkthrough_round_trips_through_database_and_queue(queue_settings: Settings) -> None:
    added = run(queue_settings, "add-data-point", "test input data 1")
    assert added.exit_code == 0, added.output
    assert lines(added) == [{"id": 1, "text": "test input data 1"}]
    run(queue_settings, "add-data-point", "the app crashes on my phone")

    imported = run(queue_settings, "import-data")
    assert imported.exit_code == 0, imported.output
    summary, *shown = lines(imported)
    # The first import has no watermark yet: it moves everything, through change 2.
    assert summary == {
        "imported": 2,
        "records_in_feature_store": 2,
        "full_import": True,
        "since_change": None,
        "through_change": 2,
        "rows_deleted": 0,
    }
    assert shown == [
        {"id": 1, "text": "test input data 1"},
        {"id": 2, "text": "the app crashes on my phone"},
    ]
    rebuilt = run(queue_settings, "import-data", "--full")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert lines(rebuilt)[0]["imported"] == 2

    published = run(queue_settings, "publish", '{"id": "1"}')
    assert published.exit_code == 0, published.output
    [message] = lines(published)

    status = run(queue_settings, "status")
    counts = json.loads(status.stdout)
    assert (counts["records"], counts["features"], counts["predictions"]) == (2, 2, 0)
    if queue_settings.queue == "local":
        assert counts["queue_unacked"] == 1

    [delivery] = drain(open_queue(queue_settings), 1)
    assert delivery.data == b'{"id": "1"}'  # exactly as given
    assert delivery.message_id == message["message_id"]


def test_publish_many_ids_and_ranges(queue_settings: Settings) -> None:
    by_ids = run(queue_settings, "publish", "--ids", "3", "1", "2")
    assert by_ids.exit_code == 0, by_ids.output
    assert len(lines(by_ids)) == 3
    by_range = run(queue_settings, "publish", "--range", "10-2509")
    assert by_range.exit_code == 0, by_range.output
    assert lines(by_range)[0]["published"] == 2500
    got = drain(open_queue(queue_settings), 2503, timeout=60)
    ids = sorted(int(json.loads(m.data)["id"]) for m in got)
    assert ids == [1, 2, 3, *range(10, 2510)]


def test_load_csv_and_jsonl_in_chunks(app_settings: Settings, tmp_path: Path) -> None:
    csv_file = tmp_path / "records.csv"
    csv_file.write_text("text,other\n" + "".join(f'"hello, {i}",x\n' for i in range(7000)))
    loaded = run(app_settings, "load", str(csv_file))
    assert loaded.exit_code == 0, loaded.output
    assert lines(loaded) == [{"loaded": 7000, "first_id": 1, "last_id": 7000}]

    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two", "extra": 1}\n')
    assert lines(run(app_settings, "load", str(jsonl))) == [
        {"loaded": 2, "first_id": 7001, "last_id": 7002}
    ]
    with engine_of(app_settings).connect() as connection:
        text = connection.execute(
            sa.select(db.data_points.c.text).where(db.data_points.c.id == 6001)
        ).scalar_one()
    assert text == "hello, 6000"


def test_a_bad_line_loads_nothing(app_settings: Settings, tmp_path: Path) -> None:
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"text": ""}\n')
    result = run(app_settings, "load", str(jsonl))
    assert result.exit_code == 1
    assert f"{jsonl}:2" in result.stderr
    assert "empty" in result.stderr
    assert json.loads(run(app_settings, "status").stdout)["records"] == 0


def test_prediction_in_the_replaced_systems_format(app_settings: Settings) -> None:
    missing = run(app_settings, "prediction", "1")
    assert missing.exit_code == 1
    assert missing.stdout == ""
    assert missing.stderr.strip() == (
        "record 1 does not exist (add-data-point or load adds records)"
    )

    run(app_settings, "add-data-point", "test input data 1")
    not_yet = run(app_settings, "prediction", "1")
    assert (not_yet.exit_code, not_yet.stderr.strip()) == (1, "no prediction for record 1 yet")
    now = db.utcnow()
    with engine_of(app_settings).begin() as connection:
        connection.execute(
            db.predictions.insert().values(
                record_id=1,
                model="zero-shot",
                configuration="c",
                is_current=True,
                sequence="test input data 1",
                labels=["mobile", "website", "account access", "billing"],
                scores=[0.3479, 0.3264, 0.1976, 0.1282],
                created_at=now,
                updated_at=now,
            )
        )
    found = run(app_settings, "prediction", "1")
    assert found.exit_code == 0
    assert json.loads(found.stdout) == {
        "data": "test input data 1",
        "prediction": {
            "sequence": "test input data 1",
            "labels": ["mobile", "website", "account access", "billing"],
            "scores": [0.3479, 0.3264, 0.1976, 0.1282],
        },
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add-data-point", ""], "empty"),
        (["add-data-point", "   "], "empty"),
        (["load", "/no/such/file.csv"], "no such file"),
        (["publish", "--range", "10-1"], "not a range"),
        (["publish", "--range", "abc"], "not a range"),
        (["publish", "--ids", "1", "x"], "not a record id"),
        (["publish"], "give one message"),
        (["prediction", "0"], "0"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    settings = Settings(home=tmp_path)
    result = CliRunner().invoke(cli, args, env=settings_env(settings))
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unreachable_database_and_emulator_are_one_line(tmp_path: Path) -> None:
    env = {"BATCHINFER_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none"}
    result = CliRunner().invoke(cli, ["status"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach the app database")
    assert len(result.stderr.strip().splitlines()) == 1

    env = {
        "BATCHINFER_HOME": str(tmp_path),
        "BATCHINFER_QUEUE": "pubsub",
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
    }
    result = CliRunner().invoke(cli, ["publish", '{"id": 1}'], env=env)
    assert result.exit_code == 1
    assert "Pub/Sub (emulator at 127.0.0.1:9)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_empty_message_is_refused_by_pubsub_and_kept_by_the_local_queue(
    queue_settings: Settings,
) -> None:
    result = run(queue_settings, "publish", "")
    if queue_settings.queue == "pubsub":
        assert result.exit_code == 1
        assert "Pub/Sub refuses empty messages" in result.stderr
        assert open_queue(queue_settings).pull(max_messages=1, timeout=2) == []
    else:
        assert result.exit_code == 0, result.output
        [delivery] = drain(open_queue(queue_settings), 1)
        assert delivery.data == b""  # the sensor dead-letters it with its reason


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    commands = [
        ["add-data-point"],
        ["load"],
        ["import-data"],
        ["publish"],
        ["predict"],
        ["prediction"],
        ["status"],
        ["dead-letters"],
        ["dead-letters", "replay"],
        ["db", "upgrade"],
        ["pubsub", "create"],
        ["serve-model"],
    ]
    for command in commands:
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Example" in result.output, command


def test_first_use_on_a_laptop_creates_the_embedded_database(tmp_path: Path) -> None:
    """No setup step: the CLI migrates the embedded SQLite database it is the first to touch."""
    fresh = Settings(home=tmp_path / "home")
    added = run(fresh, "add-data-point", "first words")
    assert added.exit_code == 0, added.output
    assert lines(added) == [{"id": 1, "text": "first words"}]
    db.dispose_engines()


def test_an_unmigrated_server_database_is_refused_with_the_command_to_run(
    postgres_url: str, tmp_path: Path
) -> None:
    """Only `batchinfer db upgrade` (the deploy run) migrates a server database."""
    settings = Settings(home=tmp_path, database_url=postgres_url)
    refused = CliRunner().invoke(cli, ["status"], env=settings_env(settings))
    assert refused.exit_code == 1
    assert "batchinfer db upgrade" in refused.stderr
    assert "Traceback" not in refused.output
    upgraded = run(settings, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert "newest schema" in upgraded.stdout
    assert run(settings, "status").exit_code == 0
    db.dispose_engines()


def test_predict_requests_the_records_that_exist_and_names_the_others(
    app_settings: Settings,
) -> None:
    run(app_settings, "add-data-point", "I was charged twice")

    result = run(app_settings, "predict", "1", "424242", "2")

    assert result.exit_code == 1
    assert lines(result) == [{"record_id": 1, "message_id": "1"}]
    assert result.stderr.strip() == (
        "records 2, 424242 do not exist (add-data-point or load adds records); not requested"
    )
    [delivery] = drain(open_queue(app_settings), 1)
    assert json.loads(delivery.data) == {"id": "1"}


def test_predict_of_records_that_all_exist_exits_0(app_settings: Settings) -> None:
    run(app_settings, "add-data-point", "I was charged twice")

    result = run(app_settings, "predict", "1")

    assert (result.exit_code, result.stderr) == (0, "")
    assert lines(result) == [{"record_id": 1, "message_id": "1"}]


def test_load_help_names_every_format_it_reads() -> None:
    result = CliRunner().invoke(cli, ["load", "-h"])

    assert result.exit_code == 0
    for name in ("CSV", "Parquet", "JSONL"):
        assert name in result.output


def test_status_says_when_the_model_server_is_unreachable(app_settings: Settings) -> None:
    settings = app_settings.model_copy(update={"model_url": f"http://127.0.0.1:{free_port()}"})

    result = run(settings, "status")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_server"] == "unreachable"
