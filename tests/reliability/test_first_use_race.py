"""Fault 13: four commands started at once on a fresh home race to create its databases.

Each ``batchinfer add-data-point`` on a new ``BATCHINFER_HOME`` migrates the embedded SQLite
database and opens the Dagster instance of the same home, both of which create tables. Before
the lock (``db.upgrade``, ``asset_events.open_instance``) one of the four failed in most trials
with ``table data_points already exists`` and its record was not stored. Real processes, started
together, on three fresh homes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db

BATCHINFER = str(Path(sys.executable).parent / "batchinfer")
WRITERS = 4
TRIALS = 3

pytestmark = pytest.mark.slow


def fresh_home_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHINFER_", "DAGSTER_"))}
    env["BATCHINFER_HOME"] = str(home)
    return env


@pytest.mark.parametrize("trial", range(TRIALS))
def test_four_add_data_point_on_a_fresh_home_all_store_their_record(
    tmp_path: Path, trial: int
) -> None:
    home = tmp_path / f"home-{trial}"
    env = fresh_home_env(home)
    processes = [
        subprocess.Popen(
            [BATCHINFER, "add-data-point", f"writer {n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    outputs = [(p.wait(timeout=300), *p.communicate()) for p in processes]

    for returncode, _, stderr in outputs:
        assert returncode == 0, stderr
        # The Dagster instance of the home recorded every observation: no "did not record".
        assert "warning" not in stderr, stderr
    printed = sorted(json.loads(stdout)["text"] for _, stdout, _ in outputs)
    assert printed == [f"writer {n}" for n in range(WRITERS)]
    with sqlite3.connect(home / "batchinfer.db") as connection:
        stored = sorted(t for (t,) in connection.execute("SELECT text FROM data_points"))
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert stored == printed
    assert revision == db.head_revision()


@pytest.mark.postgres
def test_four_upgrades_of_a_fresh_postgres_database_at_once_all_succeed(postgres_url: str) -> None:
    """The advisory lock serializes them: one migrates, three find the schema at head."""
    engines = [db.create_app_engine(postgres_url) for _ in range(WRITERS)]
    pool = ThreadPoolExecutor(WRITERS)
    try:
        futures = [pool.submit(upgrade_error, engine) for engine in engines]
        # Without the lock the four migrations wait on each other's DDL locks for good.
        _, stuck = wait(futures, timeout=120)
        assert not stuck, f"{len(stuck)} of {WRITERS} migrations still waiting after 120 s"
        assert [future.result() for future in futures] == [None] * WRITERS
        assert db.current_revision(engines[0]) == db.head_revision()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for engine in engines:
            engine.dispose()


def upgrade_error(engine: sa.Engine) -> str | None:
    try:
        db.upgrade(engine)
    except Exception as error:  # noqa: BLE001 - the test compares every outcome at once
        return f"{type(error).__name__}: {error}"
    return None
