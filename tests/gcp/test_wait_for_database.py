"""The start-up wait of every Dagster container (batchinfer_dagster/wait_for_database.py):
bounded, on an injected clock, against a port where nothing listens and a real database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from batchinfer_dagster.db import DatabaseUnavailableError
from batchinfer_dagster.wait_for_database import probe_engine, wait_for_database


class FakeTime:
    """A monotonic clock that moves only when the code sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unreachable_url() -> str:
    return f"postgresql+psycopg://u:secret@127.0.0.1:{closed_port()}/app"


@pytest.mark.parametrize(("timeout", "attempts"), [(0, 1), (4, 3), (5, 4)])
def test_gives_up_at_the_deadline_naming_the_database(timeout: float, attempts: int) -> None:
    """Attempts at 0, 2, 4 s (interval 2): a 4 s wait makes its last attempt at the deadline,
    a 5 s one a fourth at 5 s (the last sleep is cut to the deadline)."""
    time = FakeTime()
    engine = probe_engine(unreachable_url())
    with pytest.raises(DatabaseUnavailableError) as raised:
        wait_for_database(engine, timeout=timeout, interval=2, clock=time.clock, sleep=time.sleep)
    message = str(raised.value)
    assert f"within {timeout:g} s ({attempts} attempts; last: " in message
    assert "127.0.0.1" in message
    assert "secret" not in message
    assert sum(time.sleeps) == timeout


def test_returns_at_the_first_answer(tmp_path: Path) -> None:
    time = FakeTime()
    engine = probe_engine(f"sqlite:///{tmp_path / 'app.db'}")
    assert wait_for_database(engine, timeout=180, clock=time.clock, sleep=time.sleep) == 1
    assert time.sleeps == []


def test_then_becomes_the_command(tmp_path: Path) -> None:
    env = {**os.environ, "BATCHINFER_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "batchinfer_dagster.wait_for_database", "--timeout", "5", "--",
         sys.executable, "-c", "import sys; print('ran', sys.argv[1:])", "a b"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran ['a b']\n"


def test_a_database_that_never_answers_fails_the_container_in_one_line() -> None:
    env = {**os.environ, "BATCHINFER_DATABASE_URL": unreachable_url()}
    result = subprocess.run(
        [sys.executable, "-m", "batchinfer_dagster.wait_for_database", "--timeout", "0", "--",
         "echo", "never"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "did not answer within 0 s (1 attempts" in result.stderr
