"""The `batchinfer` command on files and arguments people really have.

Excel's "CSV UTF-8" (a byte-order mark), Latin-1 files, arguments that are not UTF-8, ids past
2^63-1 and ranges of billions: each is read, or refused in one line on stderr with exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchinfer_dagster import ledger
from batchinfer_dagster.cli import cli
from batchinfer_dagster.cli.requests import id_payloads, publish_payloads
from batchinfer_dagster.connections import Connections
from batchinfer_dagster.records import first_undecodable_byte
from batchinfer_dagster.settings import Settings
from batchinfer_testing.cli_runner import lines, run, settings_env
from batchinfer_testing.deployment import migrate

BATCHINFER = str(Path(sys.executable).parent / "batchinfer")


def one_line_error(result: object) -> str:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    stderr = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(stderr) == 1, stderr
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    return stderr[0]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("excel.csv", "\ufefftext,note\nmy invoice is wrong,a\nthe app crashes,b\n"),
        ("notepad.jsonl", '\ufeff{"text": "my invoice is wrong"}\n{"text": "the app crashes"}\n'),
    ],
)
def test_a_file_with_a_byte_order_mark_loads(
    app_settings: Settings, tmp_path: Path, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    result = run(app_settings, "load", str(path))
    assert result.exit_code == 0, result.output
    assert lines(result) == [{"loaded": 2, "first_id": 1, "last_id": 2}]
    assert lines(run(app_settings, "import-data"))[1:] == [
        {"id": 1, "text": "my invoice is wrong"},
        {"id": 2, "text": "the app crashes"},
    ]


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("latin1.csv", "text\nfine\ncafé crème\n".encode("latin-1"), "not UTF-8 ("),
        ("latin1.jsonl", '{"text": "café"}\n'.encode("latin-1"), "at byte 13"),
        ("nul.csv", b"text\nfine\nbad\x00byte\n", "nul.csv:3 contains a NUL character"),
        ("nul.jsonl", b'{"text": "a\\u0000b"}\n', "contains a NUL character"),
        ("surrogate.jsonl", b'{"text": "a\\ud800b"}\n', "not valid UTF-8"),
        ("deep.jsonl", b'{"text": "x", "n": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "deeply"),
        ("digits.jsonl", b'{"text": "x", "n": ' + b"9" * 5000 + b"}\n", "not JSON"),
    ],
)
def test_an_unreadable_file_is_one_line_and_loads_nothing(
    app_settings: Settings, tmp_path: Path, name: str, content: bytes, fragment: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    message = one_line_error(run(app_settings, "load", str(path)))
    assert fragment in message
    assert json.loads(run(app_settings, "status").stdout)["records"] == 0


def test_the_offset_of_a_bad_byte_is_found_across_read_blocks(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes("é".encode() * 10 + b"\xff" + b"x" * 10)
    assert [first_undecodable_byte(path, block) for block in (1, 3, 4, 1024)] == [20] * 4
    path.write_bytes(b"ok" + "é".encode()[:1])  # cut at the end of the file
    assert first_undecodable_byte(path) == 2


def test_a_long_csv_field_is_a_legal_record(app_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    text = "long " * 40_000  # 200,000 characters: past the csv module's 128 KiB default
    path.write_text(f"text\n{text}\n", encoding="utf-8")
    result = run(app_settings, "load", str(path))
    assert result.exit_code == 0, result.output
    assert lines(result) == [{"loaded": 1, "first_id": 1, "last_id": 1}]


def test_arguments_that_are_not_utf8_are_one_line(tmp_path: Path) -> None:
    """The real command in a process: argv bytes that are not UTF-8 (a Latin-1 terminal)."""
    environment = {**os.environ, "BATCHINFER_HOME": str(tmp_path)}
    for args, fragment in [
        ([b"add-data-point", b"caf\xe9"], "is not valid UTF-8 (byte b'\\xe9' at character 3)"),
        ([b"publish", b'{"id": "caf\xe9"}'], "the message is not valid UTF-8"),
    ]:
        result = subprocess.run(
            [BATCHINFER.encode(), *args], env=environment, capture_output=True, check=False
        )
        stderr = result.stderr.decode(errors="replace").strip().splitlines()
        assert result.returncode == 1, stderr
        assert len(stderr) == 1, stderr
        assert fragment in stderr[0]


@pytest.mark.parametrize(
    "args",
    [
        ["prediction", str(ledger.MAX_RECORD_ID + 1)],
        ["prediction", "9" * 5000],
        ["prediction", "--", "-1"],
        ["publish", "--ids", "1", str(ledger.MAX_RECORD_ID + 1)],
        ["publish", "--range", f"1-{ledger.MAX_RECORD_ID + 1}"],
        ["publish", "--range", "0-5"],
        ["predict", "1", "2" * 20],
        ["dead-letters", "replay", "--id", "0"],
    ],
)
def test_ids_outside_1_to_2_63_minus_1_are_one_line_and_exit_1(
    tmp_path: Path, args: list[str]
) -> None:
    settings = Settings(home=tmp_path)
    result = CliRunner().invoke(cli, args, env=settings_env(settings))
    assert "is not a record id" in one_line_error(result)


def test_the_largest_id_is_a_record_id(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    result = CliRunner().invoke(
        cli, ["prediction", str(ledger.MAX_RECORD_ID)], env=settings_env(settings)
    )
    assert one_line_error(result) == (
        f"record {ledger.MAX_RECORD_ID} does not exist (add-data-point or load adds records)"
    )


def publish_peak_bytes(settings: Settings, count: int) -> int:
    """Peak Python memory of publishing ``count`` ids from a range (tracemalloc)."""
    ids = range(1, count + 1)
    connections = Connections(settings)
    migrate(settings)
    tracemalloc.start()
    try:
        report = publish_payloads(connections, id_payloads(ids), len(ids))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.count == count
    return peak


def test_publish_range_streams_in_chunks_with_bounded_memory(tmp_path: Path) -> None:
    """Ten times the messages, not ten times the memory: one chunk is held at a time.

    Building every payload first (the old behaviour) grows the peak with the count: 30,000
    payloads and their message ids are several MB, against a chunk's few hundred KB.
    """
    settings = Settings(home=tmp_path)
    publish_peak_bytes(settings, 1000)  # warm-up: engine, migrations, compiled statements
    small = publish_peak_bytes(settings, 3_000)
    large = publish_peak_bytes(settings, 30_000)
    assert large < 1.5 * small, (small, large)
