"""Settings refuse, at load and in one line, every value the model server or Pub/Sub would refuse.

A configuration mistake used to load fine and then dead-letter every batch (a 422 per request);
now it stops ``batchinfer`` before anything runs, naming the variable and what to change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchinfer_dagster.cli import cli
from batchinfer_dagster.settings import Settings, SettingsError, load_settings
from batchinfer_protocol.zero_shot import DEFAULT_MAX_INSTANCES, DEFAULT_MAX_LABELS


@pytest.mark.parametrize(
    ("environment", "fragment"),
    [
        ({"BATCHINFER_LABELS": "billing,mobile,billing"}, "repeat ['billing']"),
        ({"BATCHINFER_LABELS": " , ,"}, "needs at least one label"),
        (
            {"BATCHINFER_LABELS": ",".join(f"l{i}" for i in range(DEFAULT_MAX_LABELS + 1))},
            f"the limit is {DEFAULT_MAX_LABELS}",
        ),
        ({"BATCHINFER_HYPOTHESIS_TEMPLATE": "No slot."}, "'{}'"),
        ({"BATCHINFER_HYPOTHESIS_TEMPLATE": "{} or {}"}, "cannot be formatted with one label"),
        ({"BATCHINFER_HYPOTHESIS_TEMPLATE": "{:>99999999}"}, "format spec"),
        ({"BATCHINFER_MODEL_CHUNK_SIZE": str(DEFAULT_MAX_INSTANCES + 1)}, "less than or equal"),
        ({"BATCHINFER_MODEL_CHUNK_SIZE": "0"}, "greater than or equal to 1"),
        ({"BATCHINFER_MODEL_TIMEOUT_SECONDS": "0"}, "greater than 0"),
        ({"BATCHINFER_MODEL_MAX_REQUEST_BYTES": "10"}, "greater than or equal to 1024"),
        ({"BATCHINFER_MODEL_URL": "localhost:8080"}, "needs http://HOST:PORT"),
        ({"BATCHINFER_MODEL_URL": "vertex://endpoints/1"}, "not a Vertex endpoint URL"),
        (
            {"BATCHINFER_QUEUE": "pubsub", "BATCHINFER_ACK_DEADLINE_SECONDS": "5"},
            "Pub/Sub accepts 10..600 seconds",
        ),
        (
            {"BATCHINFER_QUEUE": "pubsub", "BATCHINFER_MAX_DELIVERY_ATTEMPTS": "101"},
            "accepts 5..100 delivery attempts",
        ),
    ],
)
def test_a_value_the_server_would_refuse_fails_at_load_in_one_line(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], fragment: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith(f"{next(iter(environment))}") or "BATCHINFER_" in message


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        ({"labels": tuple(f"l{i}" for i in range(DEFAULT_MAX_LABELS))}, True),
        ({"labels": tuple(f"l{i}" for i in range(DEFAULT_MAX_LABELS + 1))}, False),
        ({"model_chunk_size": DEFAULT_MAX_INSTANCES}, True),
        ({"model_chunk_size": DEFAULT_MAX_INSTANCES + 1}, False),
        ({"queue": "pubsub", "ack_deadline_seconds": 10}, True),
        ({"queue": "pubsub", "ack_deadline_seconds": 9}, False),
        ({"queue": "pubsub", "ack_deadline_seconds": 600}, True),
        ({"queue": "pubsub", "ack_deadline_seconds": 601}, False),
        ({"queue": "pubsub", "max_delivery_attempts": 5}, True),
        ({"queue": "pubsub", "max_delivery_attempts": 4}, False),
        ({"queue": "local", "ack_deadline_seconds": 2}, True),  # the local queue has no bound
    ],
)
def test_limits_at_their_value_and_one_past(overrides: dict[str, object], accepted: bool) -> None:
    if accepted:
        Settings(**overrides)
    else:
        with pytest.raises(SettingsError):
            Settings(**overrides)


def test_the_cli_stops_with_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHINFER_LABELS", "billing,mobile,billing")
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: BATCHINFER_LABELS='billing,mobile,billing': the candidate labels repeat "
        "['billing']; give each label once"
    ]


def test_a_label_that_is_not_utf8_is_refused_by_the_real_command() -> None:
    """A non-UTF-8 environment value arrives as lone surrogates (os.fsdecode)."""
    environment = {**os.environ, "BATCHINFER_HOME": "/nonexistent-never-written"}
    environment_bytes = {k.encode(): v.encode() for k, v in environment.items()}
    environment_bytes[b"BATCHINFER_LABELS"] = b"billing,mobil\xe9"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "batchinfer"), "status"],
        env=environment_bytes,  # type: ignore[arg-type]
        capture_output=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1
    assert "not valid UTF-8" in lines[0]


def test_a_copy_computes_its_own_label_descriptions_and_database_url(tmp_path: Path) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text('{"billing": ["About money."]}', encoding="utf-8")
    second.write_text('{"billing": ["About invoices."]}', encoding="utf-8")
    settings = Settings(home=tmp_path, label_descriptions_file=first)
    assert settings.label_descriptions == {"billing": ("About money.",)}
    assert settings.resolved_database_url.startswith("sqlite:///")

    copied = settings.model_copy(
        update={"label_descriptions_file": second, "database_url": "sqlite:///elsewhere.db"}
    )
    unchanged = settings.model_copy()

    assert copied.label_descriptions == {"billing": ("About invoices.",)}
    assert copied.resolved_database_url == "sqlite:///elsewhere.db"
    assert unchanged.label_descriptions == settings.label_descriptions
    assert settings.label_descriptions == {"billing": ("About money.",)}


def test_a_copy_with_an_unreadable_descriptions_file_fails_at_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)

    with pytest.raises(ValueError, match="absent.json"):
        settings.model_copy(update={"label_descriptions_file": tmp_path / "absent.json"})
