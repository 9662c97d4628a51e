"""What a new user meets first, through the real ``batchinfer`` program: one state wherever it
runs, and outputs that say what they mean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BATCHINFER = str(Path(sys.executable).parent / "batchinfer")


def batchinfer(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [BATCHINFER, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell with no BATCHINFER_* set: the default home in a data directory of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHINFER_", "DAGSTER_"))}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    env["HOME"] = str(tmp_path / "user")
    return env


def test_status_from_two_directories_reads_the_same_state(
    tmp_path: Path, user_env: dict[str, str]
) -> None:
    here, elsewhere = tmp_path / "clone", tmp_path / "somewhere" / "else"
    here.mkdir()
    elsewhere.mkdir(parents=True)
    added = batchinfer(here, user_env, "add-data-point", "added from the clone")
    assert json.loads(added.stdout) == {"id": 1, "text": "added from the clone"}

    from_clone = json.loads(batchinfer(here, user_env, "status").stdout)
    from_elsewhere = json.loads(batchinfer(elsewhere, user_env, "status").stdout)
    assert from_clone == from_elsewhere
    assert from_elsewhere["records"] == 1
    home = tmp_path / "xdg-data" / "batchinfer"
    assert from_elsewhere["using"] == {
        "home": str(home),
        "dagster_home": str(home / "dagster"),
        "database": f"sqlite:///{home / 'batchinfer.db'}",
        "queue": "local (table queue_messages in the database)",
        "feature_store": "local (table features in the database)",
        "model_url": "http://127.0.0.1:8080",
    }
    assert not list(here.iterdir())
    assert not list(elsewhere.iterdir())
    assert batchinfer(elsewhere, user_env, "where", "database").stdout.strip() == (
        f"sqlite:///{home / 'batchinfer.db'}"
    )


def test_batchinfer_home_wins_and_a_relative_one_is_resolved_where_it_was_given(
    tmp_path: Path, user_env: dict[str, str]
) -> None:
    (tmp_path / "a").mkdir()
    env = {**user_env, "BATCHINFER_HOME": "state", "DAGSTER_HOME": str(tmp_path / "dh")}
    where = json.loads(batchinfer(tmp_path / "a", env, "where").stdout)
    assert where["home"] == str(tmp_path / "a" / "state")
    assert where["dagster_home"] == str(tmp_path / "dh")


def test_help_and_version(tmp_path: Path, user_env: dict[str, str]) -> None:
    short, long = (batchinfer(tmp_path, user_env, flag).stdout for flag in ("-h", "--help"))
    assert short == long
    assert "Usage: batchinfer" in short
    assert "Usage: batchinfer publish" in batchinfer(tmp_path, user_env, "publish", "-h").stdout
    version = batchinfer(tmp_path, user_env, "--version").stdout.strip()
    assert version == "batchinfer 0.1.0"


def test_publish_names_record_ids_and_message_ids_apart(
    tmp_path: Path, user_env: dict[str, str]
) -> None:
    # A message id that differs from the record id: one message published before.
    one = batchinfer(tmp_path, user_env, "publish", '{"id": "1"}')
    assert json.loads(one.stdout) == {"message_id": "1"}
    assert one.stderr == ""  # a one-message publish shows no progress label

    few = batchinfer(tmp_path, user_env, "publish", "--ids", "7", "3")
    assert [json.loads(line) for line in few.stdout.splitlines()] == [
        {"record_id": 7, "message_id": "2"},
        {"record_id": 3, "message_id": "3"},
    ]
    assert few.stderr == ""

    many = batchinfer(tmp_path, user_env, "publish", "--range", "1-1001")
    assert json.loads(many.stdout) == {
        "published": 1001,
        "first_record_id": 1,
        "last_record_id": 1001,
        "first_message_id": "4",
        "last_message_id": "1004",
    }
    assert "publishing" in many.stderr  # two chunks: the bar moves
