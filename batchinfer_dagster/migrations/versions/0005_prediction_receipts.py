"""prediction receipts: predictions keyed by (record, configuration), text digests, staleness

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-05 08:40:00.000000

``predictions`` is rebuilt (its key changes from (record_id, model) to (record_id,
configuration), which SQLite cannot alter in place): every existing row is copied with the
configuration of its model marked unknown, no text digest, and the newest row of each record
as its current one. ``prediction_configurations``, ``record_text_digests`` and
``stale_requests`` are new.
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COPIED = "record_id, model, sequence, labels, scores, batch_key, run_id, created_at, updated_at"


def legacy_configuration_digest(model: str) -> str:
    """``receipts.legacy_configuration_digest``, copied: a migration never imports app code."""
    encoded = json.dumps(
        {"legacy_model": model}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _prediction_columns() -> list[sa.Column]:
    return [
        sa.Column("record_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("sequence", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("batch_key", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "prediction_configurations",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_digest", sa.String(length=128), nullable=False),
        sa.Column("known", sa.Boolean(), nullable=False),
        sa.Column("parameters_digest", sa.String(length=64), nullable=True),
        sa.Column("candidate_labels", sa.JSON(), nullable=True),
        sa.Column("hypothesis_template", sa.Text(), nullable=True),
        sa.Column("label_descriptions", sa.JSON(), nullable=True),
        sa.Column("label_descriptions_digest", sa.String(length=64), nullable=True),
        sa.Column("multi_label", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "record_text_digests",
        sa.Column("record_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("text_digest", sa.String(length=64), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("record_id"),
    )
    op.create_table(
        "stale_requests",
        sa.Column("record_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("configuration", sa.String(length=64), nullable=False),
        sa.Column("text_digest", sa.String(length=64), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("record_id"),
    )
    op.create_table(
        "predictions_0005",
        sa.Column("record_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("configuration", sa.String(length=64), nullable=False),
        *_prediction_columns()[1:],
        sa.Column("text_digest", sa.String(length=64), nullable=True),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("record_id", "configuration"),
    )
    connection = op.get_bind()
    configurations = sa.table(
        "prediction_configurations",
        sa.column("digest", sa.String),
        sa.column("model", sa.String),
        sa.column("model_digest", sa.String),
        sa.column("known", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    models = connection.execute(sa.text("SELECT DISTINCT model FROM predictions")).scalars()
    for model in list(models):
        digest = legacy_configuration_digest(model)
        connection.execute(
            configurations.insert().values(
                digest=digest,
                model=model,
                model_digest="unknown",
                known=False,
                created_at=sa.func.current_timestamp(),
            )
        )
        connection.execute(
            sa.text(
                f"INSERT INTO predictions_0005 (configuration, text_digest, is_current, {COPIED}) "
                f"SELECT :digest, NULL, :no, {COPIED} FROM predictions WHERE model = :model"
            ),
            {"digest": digest, "model": model, "no": False},
        )
    # A record's current prediction: its newest row (ties: the greatest configuration digest).
    connection.execute(
        sa.text(
            "UPDATE predictions_0005 SET is_current = :yes WHERE NOT EXISTS ("
            "SELECT 1 FROM predictions_0005 AS newer "
            "WHERE newer.record_id = predictions_0005.record_id AND ("
            "newer.updated_at > predictions_0005.updated_at OR ("
            "newer.updated_at = predictions_0005.updated_at "
            "AND newer.configuration > predictions_0005.configuration)))"
        ),
        {"yes": True},
    )
    op.drop_table("predictions")
    op.rename_table("predictions_0005", "predictions")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ux_predictions_current_record",
            ["record_id"],
            unique=True,
            sqlite_where=sa.text("is_current"),
            postgresql_where=sa.text("is_current"),
        )
        batch_op.create_index("ix_predictions_configuration", ["configuration"], unique=False)


def downgrade() -> None:
    """Back to (record_id, model): the newest row of each record and model is kept."""
    op.create_table(
        "predictions_0004",
        *_prediction_columns(),
        sa.PrimaryKeyConstraint("record_id", "model"),
    )
    op.execute(
        f"INSERT INTO predictions_0004 ({COPIED}) SELECT {COPIED} FROM predictions "
        "WHERE NOT EXISTS (SELECT 1 FROM predictions AS newer "
        "WHERE newer.record_id = predictions.record_id AND newer.model = predictions.model AND ("
        "newer.updated_at > predictions.updated_at OR (newer.updated_at = predictions.updated_at "
        "AND newer.configuration > predictions.configuration)))"
    )
    op.drop_table("predictions")
    op.rename_table("predictions_0004", "predictions")
    op.drop_table("stale_requests")
    op.drop_table("record_text_digests")
    op.drop_table("prediction_configurations")
