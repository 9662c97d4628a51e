"""Migration 0005 keeps every prediction, with its receipt marked unknown, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command

from batchinfer_dagster import db
from batchinfer_dagster.receipts import legacy_configuration_digest

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
OLD = sa.table(
    "predictions",
    sa.column("record_id"),
    sa.column("model"),
    sa.column("sequence"),
    sa.column("labels", sa.JSON),
    sa.column("scores", sa.JSON),
    sa.column("batch_key"),
    sa.column("run_id"),
    sa.column("created_at", db.UtcDateTime()),
    sa.column("updated_at", db.UtcDateTime()),
)


def _old_row(record_id: int, model: str, minutes: int) -> dict[str, object]:
    at = T0 + timedelta(minutes=minutes)
    return {
        "record_id": record_id,
        "model": model,
        "sequence": f"text {record_id}",
        "labels": ["a", "b"],
        "scores": [0.75, 0.25],
        "batch_key": "b1",
        "run_id": "r1",
        "created_at": at,
        "updated_at": at,
    }


def _migrate(engine: sa.Engine, revision: str, *, down: bool = False) -> None:
    config = db._alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_0005_keeps_every_prediction_with_an_unknown_receipt_and_the_newest_current(
    database_url: str,
) -> None:
    engine = db.create_app_engine(database_url)
    try:
        _migrate(engine, "0003")
        old_rows = [
            _old_row(1, "model-a", 0),
            _old_row(1, "model-b", 5),  # newer: record 1's current prediction
            _old_row(2, "model-a", 1),
            _old_row(3, "model-b", 2),
            _old_row(3, "model-a", 2),  # a tie: the greatest configuration digest wins
        ]
        with engine.begin() as connection:
            connection.execute(OLD.insert(), old_rows)

        _migrate(engine, "head")

        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(db.predictions).order_by(
                    db.predictions.c.record_id, db.predictions.c.model
                )
            ).all()
            configurations = connection.execute(sa.select(db.prediction_configurations)).all()
        assert [(r.record_id, r.model) for r in rows] == [
            (1, "model-a"),
            (1, "model-b"),
            (2, "model-a"),
            (3, "model-a"),
            (3, "model-b"),
        ]
        assert all(r.configuration == legacy_configuration_digest(r.model) for r in rows)
        assert all(r.text_digest is None for r in rows)
        assert all(r.labels == ["a", "b"] and r.scores == [0.75, 0.25] for r in rows)
        tie_winner = max(legacy_configuration_digest(m) for m in ("model-a", "model-b"))
        current = {r.record_id: r.configuration for r in rows if r.is_current}
        assert current == {
            1: legacy_configuration_digest("model-b"),
            2: legacy_configuration_digest("model-a"),
            3: tie_winner,
        }
        assert sorted((c.model, c.known, c.model_digest) for c in configurations) == [
            ("model-a", False, "unknown"),
            ("model-b", False, "unknown"),
        ]
        assert all(c.candidate_labels is None for c in configurations)

        # At most one current row per record: the partial unique index refuses a second.
        with engine.connect() as connection:
            failed = False
            try:
                with connection.begin():
                    connection.execute(
                        sa.update(db.predictions)
                        .where(db.predictions.c.record_id == 1)
                        .values(is_current=True)
                    )
            except sa.exc.IntegrityError:
                failed = True
        assert failed

        _migrate(engine, "0003", down=True)
        with engine.connect() as connection:
            back = connection.execute(sa.select(OLD.c.record_id, OLD.c.model)).all()
        assert sorted(tuple(r) for r in back) == sorted(
            (r["record_id"], r["model"]) for r in old_rows
        )
        _migrate(engine, "head")
    finally:
        engine.dispose()
