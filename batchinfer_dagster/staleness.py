"""Stale predictions: which current predictions no longer match their record or configuration.

A record's current prediction is stale when

- ``text``: the digest of the text it was made from differs from the digest of the record's
  text as the feature store holds it now (``record_text_digests``, written by the import);
- ``parameters``: its configuration's labels, template, label descriptions or ``multi_label``
  differ from the deployment's (the settings);
- ``model``: the model id or weights digest differs from what the model server reports now
  (only when it was asked: ``Deployment.model`` is None otherwise);
- ``unknown_receipt``: it was stored before receipts (migration 0005), so nothing says what made
  it.

Everything compares digests stored in the app database, in one pass over the current
predictions joined on primary keys: the feature store is never read. A record edited in
``data_points`` counts as stale by text once the import moved the edit, which is also when a new
prediction can see the new text (runs read texts from the feature store).

``predict --stale`` asks for each stale prediction once: ``stale_requests`` remembers which
(record, configuration, text digest) was asked to be replaced, so asking again before the new
prediction lands publishes nothing new; the new prediction changes the record's current row,
so a later change makes it stale (and requested) again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.feature_import import ImportWindow, iter_changed
from batchinfer_dagster.receipts import ModelIdentity, Parameters, text_digest

# Stale record ids read per query by ``iter_stale``: bounded memory at any table size.
STALE_PAGE = 5000


class StaleCause(StrEnum):
    """Why a prediction is stale; one prediction may have several causes."""

    TEXT = "text"
    PARAMETERS = "parameters"
    MODEL = "model"
    UNKNOWN_RECEIPT = "unknown_receipt"


@dataclass(frozen=True)
class Deployment:
    """What the deployment predicts with now: its parameters, and the served model if known.

    ``model`` is None when the model server was not asked (or could not answer): staleness by
    model is then not judged, and ``status`` says so.
    """

    parameters: Parameters
    model: ModelIdentity | None = None


def store_text_digests(
    connection: Connection, records: Iterable[tuple[int, str]], *, now: datetime
) -> None:
    """Record the digest of each ``(record_id, text)`` the feature store now holds (upsert)."""
    rows = [
        {"record_id": record_id, "text_digest": text_digest(text), "imported_at": now}
        for record_id, text in records
    ]
    for chunk in chunked(rows, db.IN_CHUNK):
        db.upsert(
            connection,
            db.record_text_digests,
            chunk,
            key=["record_id"],
            update=["text_digest", "imported_at"],
        )


def store_window_digests(engine: Engine, window: ImportWindow, *, now: datetime) -> None:
    """Record the digests of the records an import moved, read again after the store accepted
    them (a store that loads everything at its end, like BigQuery, cannot digest per chunk)."""
    for rows in iter_changed(engine, window):
        with engine.begin() as connection:
            store_text_digests(connection, [(row.id, row.text) for row in rows], now=now)


def _causes(deployment: Deployment) -> dict[StaleCause, sa.ColumnElement[bool]]:
    """A SQL condition per cause, over ``predictions`` (current rows), ``prediction_configurations``
    and ``record_text_digests`` (outer-joined: a record never imported since 0005 has none)."""
    p, c, d = db.predictions, db.prediction_configurations, db.record_text_digests
    known = sa.and_(c.c.known.is_(True), p.c.text_digest.is_not(None))
    causes: dict[StaleCause, sa.ColumnElement[bool]] = {
        StaleCause.TEXT: sa.and_(
            p.c.text_digest.is_not(None),
            d.c.text_digest.is_not(None),
            p.c.text_digest != d.c.text_digest,
        ),
        StaleCause.PARAMETERS: sa.and_(
            c.c.known.is_(True), c.c.parameters_digest != deployment.parameters.digest
        ),
        StaleCause.UNKNOWN_RECEIPT: sa.not_(known),
    }
    if deployment.model is not None:
        causes[StaleCause.MODEL] = sa.and_(
            c.c.known.is_(True),
            sa.or_(
                c.c.model != deployment.model.name,
                c.c.model_digest != deployment.model.weights_digest,
            ),
        )
    return causes


def _current_predictions() -> sa.FromClause:
    p, c, d = db.predictions, db.prediction_configurations, db.record_text_digests
    return p.join(c, c.c.digest == p.c.configuration).outerjoin(d, d.c.record_id == p.c.record_id)


def stale_counts(engine: Engine, deployment: Deployment) -> dict[str, int]:
    """``{"stale": N, "current": M, "<cause>": n, ...}`` over the records' current predictions.

    One pass (a SUM per cause). A prediction stale for two causes counts under both and once
    in ``stale``; ``model`` is absent when the deployment's model is unknown.
    """
    causes = _causes(deployment)
    any_cause = sa.or_(*causes.values())

    def counted(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    query = (
        sa.select(
            sa.func.count().label("current"),
            counted(any_cause).label("stale"),
            *(counted(condition).label(cause.value) for cause, condition in causes.items()),
        )
        .select_from(_current_predictions())
        .where(db.predictions.c.is_current.is_(True))
    )
    with engine.connect() as connection:
        row = connection.execute(query).one()
    return {key: int(value) for key, value in row._mapping.items()}


def stale_causes(engine: Engine, deployment: Deployment, record_id: int) -> list[str]:
    """Why the record's current prediction is stale (empty: it is not, or it has none)."""
    causes = _causes(deployment)
    query = (
        sa.select(*(condition.label(cause.value) for cause, condition in causes.items()))
        .select_from(_current_predictions())
        .where(db.predictions.c.is_current.is_(True), db.predictions.c.record_id == record_id)
    )
    with engine.connect() as connection:
        row = connection.execute(query).one_or_none()
    if row is None:
        return []
    return [cause for cause, stale in row._mapping.items() if stale]


def iter_stale(
    engine: Engine, deployment: Deployment, *, unrequested_only: bool = False
) -> Iterator[list[StalePrediction]]:
    """Stale current predictions in record id order, ``STALE_PAGE`` at a time (keyset).

    ``unrequested_only`` leaves out those whose replacement was already asked for
    (``stale_requests`` holds their record, configuration and text digest).
    """
    p, r = db.predictions, db.stale_requests
    query = (
        sa.select(p.c.record_id, p.c.configuration, p.c.text_digest)
        .select_from(_current_predictions())
        .where(p.c.is_current.is_(True), sa.or_(*_causes(deployment).values()))
    )
    if unrequested_only:
        query = query.where(
            ~sa.exists().where(
                r.c.record_id == p.c.record_id,
                r.c.configuration == p.c.configuration,
                sa.func.coalesce(r.c.text_digest, "") == sa.func.coalesce(p.c.text_digest, ""),
            )
        )
    after = 0
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                query.where(p.c.record_id > after).order_by(p.c.record_id).limit(STALE_PAGE)
            ).all()
        if not rows:
            return
        yield [StalePrediction(row.record_id, row.configuration, row.text_digest) for row in rows]
        after = rows[-1].record_id


@dataclass(frozen=True)
class StalePrediction:
    """A stale current prediction, by what identifies it: record, configuration, text digest."""

    record_id: int
    configuration: str
    text_digest: str | None


def record_requested(engine: Engine, stale: Sequence[StalePrediction], *, now: datetime) -> None:
    """Remember that a replacement of each of ``stale`` was published (after the publish)."""
    with engine.begin() as connection:
        for chunk in chunked(stale, db.IN_CHUNK):
            db.upsert(
                connection,
                db.stale_requests,
                [
                    {
                        "record_id": item.record_id,
                        "configuration": item.configuration,
                        "text_digest": item.text_digest,
                        "requested_at": now,
                    }
                    for item in chunk
                ],
                key=["record_id"],
                update=["configuration", "text_digest", "requested_at"],
            )
