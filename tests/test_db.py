"""Schema, migrations, ids and the local feature store on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from batchinfer_dagster import db
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of

TABLES = {
    "data_points",
    "features",
    "prediction_requests",
    "prediction_batches",
    "predictions",
    "dead_letters",
    "queue_messages",
}


def test_migrations_create_the_schema_and_rerun_as_no_op(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    assert set(sa.inspect(engine).get_table_names()) >= TABLES
    db.upgrade(engine)  # a second run changes nothing and does not fail
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    assert current == db.head_revision()
    columns = {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    assert {"record_id", "model", "sequence", "labels", "scores", "batch_key", "run_id"} <= columns


def test_0003_gives_existing_records_updated_at_from_created_at(
    database_url: str,
) -> None:
    """Records stored before the watermark existed count as changed when they were created."""
    from alembic import command

    engine = db.create_app_engine(database_url)
    try:
        config = db._alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0002")
        created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO data_points (text, created_at) VALUES ('old', :created)"),
                {"created": created},
            )
        db.upgrade(engine)
        with engine.connect() as connection:
            row = connection.execute(sa.select(db.data_points.c.updated_at)).one()
        assert row.updated_at == created
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_unmigrated_database_is_refused_with_the_command_to_run(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Sensors and runs never migrate: a database behind the code fails with what to run."""
    url = (
        f"sqlite:///{tmp_path / 'fresh.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    try:
        with pytest.raises(db.SchemaOutOfDateError, match=r"none \(empty\).*batchinfer db upgrade"):
            db.engine_for(url)
        engine = db.create_app_engine(url)
        db.upgrade(engine)
        engine.dispose()
        assert db.current_revision(db.engine_for(url)) == db.head_revision()
    finally:
        db.dispose_engines()


def test_ids_come_from_the_database_under_concurrent_writers(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(
            pool.map(lambda n: add_records(engine, [f"t{n}-{i}" for i in range(25)]), range(8))
        )
    ids = [i for batch in batches for i in batch]
    assert len(ids) == len(set(ids)) == 200
    for batch in batches:
        assert batch == sorted(batch)  # returned in the order given
    with engine.connect() as connection:
        texts = dict(
            connection.execute(sa.select(db.data_points.c.id, db.data_points.c.text)).all()
        )
    assert texts[batches[3][7]] == "t3-7"


def test_times_round_trip_as_aware_utc(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    add_records(engine, ["x"])
    with engine.connect() as connection:
        created = connection.execute(sa.select(db.data_points.c.created_at)).scalar_one()
    assert created.tzinfo is not None
    assert created.utcoffset().total_seconds() == 0


def test_local_feature_store_imports_upserts_and_fetches_many(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ids = add_records(engine, [f"message {i}" for i in range(1, 31)])
    store = LocalFeatureStore(engine)

    result = store.import_records()
    assert (result.rows_imported, result.total_records) == (30, 30)

    with engine.begin() as connection:
        connection.execute(
            sa.update(db.data_points).where(db.data_points.c.id == ids[0]).values(text="edited")
        )
    assert store.import_records().total_records == 30  # idempotent: upsert, no duplicates

    found = store.fetch([ids[0], ids[5], 10_000, ids[5]])
    assert found == {ids[0]: "edited", ids[5]: "message 6"}  # the unknown id is simply missing
    shown, total = store.list_records(3)
    assert (shown, total) == (
        [(ids[0], "edited"), (ids[1], "message 2"), (ids[2], "message 3")],
        30,
    )


def test_migration_0002_names_the_record_of_existing_ledger_dead_letters(
    app_settings: Settings,
) -> None:
    engine = db.create_app_engine(app_settings.resolved_database_url)
    config = Config()
    config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        # The fixture's database may already be at head (first use migrates): go back to 0001.
        command.downgrade(config, "0001")
        letters = sa.table(
            "dead_letters",
            sa.column("source"),
            sa.column("payload"),
            sa.column("reason"),
            sa.column("received_at"),
        )
        connection.execute(
            letters.insert(),
            [
                {"source": source, "payload": payload, "reason": "r", "received_at": db.utcnow()}
                for source, payload in [
                    ("ledger", '{"id": "42"}'),
                    ("sensor", '{"id": "42"}'),  # a malformed message names no record
                    ("ledger", '{"id": "x"}'),
                ]
            ],
        )

    db.upgrade(engine)

    with engine.connect() as connection:
        found = connection.execute(
            sa.select(db.dead_letters.c.source, db.dead_letters.c.record_id).order_by(
                db.dead_letters.c.id
            )
        ).all()
    assert [tuple(row) for row in found] == [("ledger", 42), ("sensor", None), ("ledger", None)]
    engine.dispose()
