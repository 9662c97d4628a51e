"""A rollout: a candidate configuration's predictions beside the current ones, compared, then
promoted or discarded.

Candidate predictions are ordinary rows of ``predictions`` under the candidate's configuration
digest, written with ``is_current`` false (``ledger.write_predictions(current=False)``), so no
reader shows them as "the prediction" and staleness ignores them. A rollout is named by its
candidate's digest; nothing else is stored.

- ``report``: computed in SQL over the records that have both a current and a candidate row:
  agreement of the top labels, the current → candidate confusion matrix, the flip rate per
  current label, the mean |Δ| of the top label's score (candidate's top score minus current's),
  and the disagreements with the largest such |Δ|.
- ``promote``: one transaction makes every candidate row current (the rows it replaces stay,
  no longer current, queryable by configuration); a concurrent reader sees all of the old or
  all of the new.
- ``discard``: deletes the candidate rows that are not current.

Since round 2 a rollout is predicted by ordinary ``predictions`` runs: ``start`` writes ledger
batches of the chosen records, and their keys in ``rollout_batches``, in one transaction; the
sensor launches one run per batch as for any batch (visible, retried by reconcile, resumable).
A run whose batch is a rollout's (``candidate_of_batch``) sends the candidate's parameters and
settles its answers as candidate rows (``ledger.Settlement.rollout``). The candidate is named
by its configuration digest, registered in ``prediction_configurations`` at ``start`` with the
model the server reported then; a run answered by another model fails instead of storing rows
the rollout would never compare. ``promote`` waits until no request of the rollout is open;
``discard`` closes the rollout first, so a batch settling later writes nothing.

Since round 3:

- A candidate may be served by another model server (``model_url``, kept on the rollout's
  row): its batches are sent there (``model_url_of_batch``), and the report names both
  sides' models and weights digests.
- A rollout's request that becomes a dead letter is charged to the rollout
  (``dead_letters.rollout``): the report counts the records the model refused and those
  missing from the feature store (dead-lettered at once, no feature wait: a wait would re-batch
  them into an ordinary batch), a replay requests them again in the rollout while it runs, and
  only a candidate prediction resolves them. ``promote`` makes those still open ordinary dead
  letters, ``discard`` resolves them; one written after either is settled alike
  (``ledger.dead_letters.dead_letter_requests``).
- The report gives each side's measured texts/s (``prediction_batches.model_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db, ledger
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.dead_letters import DISCARDED_BY, UNKNOWN_RECORD
from batchinfer_dagster.ledger.rollout_lock import locked_rollout_status
from batchinfer_dagster.ledger.runs import ROLLOUT_SOURCE, register_configuration
from batchinfer_dagster.ledger.states import DeadLetterSource, RequestStatus, RolloutStatus
from batchinfer_dagster.receipts import Configuration, ModelIdentity, Parameters

# Disagreements listed in a report, largest margin first.
DISAGREEMENTS_SHOWN = 10


# Requests of a rollout that may still write a candidate row.
OPEN_REQUEST_STATUSES = (RequestStatus.QUEUED, RequestStatus.WAITING_FEATURES)


class DeadLetterKind(StrEnum):
    """Why a rollout's record has no candidate row, as the report counts it."""

    REFUSED = "refused"  # the model server refused the record on its own (per-item error)
    MISSING = "missing"  # the record was not in the feature store (deleted since)
    FAILED = "failed"  # the batch ran out of attempts, or the server refused the whole batch


class UnknownCandidateError(LookupError):
    """No candidate predictions under that configuration digest."""


class RolloutStateError(RuntimeError):
    """The rollout is not in a state that allows the operation (the message says what to do)."""


@dataclass(frozen=True)
class Candidate:
    """A rollout's candidate as a run needs it: its digest, configuration and status."""

    digest: str
    configuration: Configuration
    status: RolloutStatus
    # The model server its batches go to; None: the deployment's.
    model_url: str | None = None


@dataclass(frozen=True)
class Started:
    """What ``start`` wrote: records requested now, and those it skipped (a candidate row or an
    open request of the rollout already), and the new ledger batches."""

    candidate: str
    requested: int
    skipped: int
    batch_keys: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "requested": self.requested,
            "skipped": self.skipped,
            "batches": len(self.batch_keys),
        }


@dataclass(frozen=True)
class Progress:
    """Where a rollout stands: its status, requests written, still open, and candidate rows."""

    candidate: str
    status: RolloutStatus
    requested: int
    open: int
    predicted: int

    def as_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "status": str(self.status),
            "requested": self.requested,
            "open": self.open,
            "predicted": self.predicted,
        }


@dataclass(frozen=True)
class SideModel:
    """The model behind one side of a comparison: its id, weights digest and how many of the
    compared records it predicted (current side: one entry per configuration found)."""

    configuration: str
    model: str
    model_digest: str
    records: int

    def as_json(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration,
            "model": self.model,
            "model_digest": self.model_digest,
            "records": self.records,
        }


@dataclass(frozen=True)
class RolloutReport:
    """What ``report`` computed; ``as_json`` is what ``batchinfer rollout report`` prints.

    ``dead_letters``: records of the rollout with an open dead letter and no candidate row,
    by ``DeadLetterKind`` (every kind present, 0 when none): they are not in ``compared``.
    ``texts_per_second``: each side's measured model throughput (``_texts_per_second``), None
    for a side with no measured batch.
    """

    candidate: str
    compared: int
    agreeing: int
    confusion: dict[str, dict[str, int]]
    mean_abs_top_score_delta: float
    disagreements: list[dict[str, Any]]
    current_models: list[SideModel]
    candidate_model: SideModel | None
    candidate_model_url: str | None
    dead_letters: dict[str, int]
    texts_per_second: dict[str, float | None]

    @property
    def agreement(self) -> float:
        return self.agreeing / self.compared if self.compared else 0.0

    def flip_rates(self) -> dict[str, float]:
        """Per current top label: the share of its records whose candidate top label differs."""
        return {
            label: 1 - row.get(label, 0) / sum(row.values())
            for label, row in self.confusion.items()
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "compared": self.compared,
            "agreement": self.agreement,
            "confusion": self.confusion,
            "flip_rates": self.flip_rates(),
            "mean_abs_top_score_delta": self.mean_abs_top_score_delta,
            "largest_disagreements": self.disagreements,
            "current_models": [side.as_json() for side in self.current_models],
            "candidate_model": self.candidate_model.as_json() if self.candidate_model else None,
            "candidate_model_url": self.candidate_model_url,
            "dead_letters": self.dead_letters,
            "texts_per_second": self.texts_per_second,
        }


def _pairs() -> tuple[sa.Table, sa.Table, sa.FromClause]:
    current = db.predictions.alias("current_row")
    candidate = db.predictions.alias("candidate_row")
    joined = current.join(
        candidate,
        sa.and_(candidate.c.record_id == current.c.record_id, current.c.is_current.is_(True)),
    )
    return current, candidate, joined


def report(engine: Engine, candidate_digest: str) -> RolloutReport:
    """Compare the candidate's rows with the current rows of the same records, in SQL."""
    current, candidate, joined = _pairs()
    which = candidate.c.configuration == candidate_digest
    current_top = current.c.labels[0].as_string()
    candidate_top = candidate.c.labels[0].as_string()
    delta = candidate.c.scores[0].as_float() - current.c.scores[0].as_float()
    with engine.connect() as connection:
        cells = connection.execute(
            sa.select(current_top.label("now"), candidate_top.label("then"), sa.func.count())
            .select_from(joined)
            .where(which)
            .group_by(current_top, candidate_top)
        ).all()
        exists = sa.or_(
            sa.exists().where(db.predictions.c.configuration == candidate_digest),
            sa.exists().where(db.rollouts.c.candidate == candidate_digest),
        )
        if not cells and not connection.execute(sa.select(exists)).scalar_one():
            raise UnknownCandidateError(
                f"no candidate predictions under configuration {candidate_digest!r}; "
                "`batchinfer rollout start` writes them"
            )
        mean_delta = connection.execute(
            sa.select(sa.func.avg(sa.func.abs(delta))).select_from(joined).where(which)
        ).scalar_one()
        largest = connection.execute(
            sa.select(
                current.c.record_id,
                current_top.label("current_label"),
                candidate_top.label("candidate_label"),
                current.c.scores[0].as_float().label("current_score"),
                candidate.c.scores[0].as_float().label("candidate_score"),
            )
            .select_from(joined)
            .where(which, current_top != candidate_top)
            .order_by(sa.func.abs(delta).desc(), current.c.record_id)
            .limit(DISAGREEMENTS_SHOWN)
        ).all()
        configurations = db.prediction_configurations
        sides = [
            SideModel(row.configuration, row.model, row.model_digest, row.records)
            for row in connection.execute(
                sa.select(
                    current.c.configuration,
                    configurations.c.model,
                    configurations.c.model_digest,
                    sa.func.count().label("records"),
                )
                .select_from(joined)
                .join(configurations, configurations.c.digest == current.c.configuration)
                .where(which)
                .group_by(
                    current.c.configuration, configurations.c.model, configurations.c.model_digest
                )
                .order_by(current.c.configuration)
            )
        ]
        named = connection.execute(
            sa.select(configurations.c.model, configurations.c.model_digest).where(
                configurations.c.digest == candidate_digest
            )
        ).one_or_none()
        model_url = connection.execute(
            sa.select(db.rollouts.c.model_url).where(db.rollouts.c.candidate == candidate_digest)
        ).scalar_one_or_none()
        dead = _dead_letter_counts(connection, candidate_digest)
        throughput = {
            "current": _texts_per_second(
                connection,
                sa.select(current.c.batch_key).select_from(joined).where(which).distinct(),
            ),
            "candidate": _texts_per_second(
                connection,
                sa.select(db.rollout_batches.c.batch_key).where(
                    db.rollout_batches.c.candidate == candidate_digest
                ),
            ),
        }
    confusion: dict[str, dict[str, int]] = {}
    for now, then, count in cells:
        confusion.setdefault(now, {})[then] = count
    compared = sum(count for _, _, count in cells)
    return RolloutReport(
        candidate=candidate_digest,
        compared=compared,
        agreeing=sum(count for now, then, count in cells if now == then),
        confusion=confusion,
        mean_abs_top_score_delta=float(mean_delta or 0.0),
        disagreements=[dict(row._mapping) for row in largest],
        current_models=sides,
        candidate_model=(
            SideModel(candidate_digest, named.model, named.model_digest, compared)
            if named is not None
            else None
        ),
        candidate_model_url=model_url,
        dead_letters=dead,
        texts_per_second=throughput,
    )


def _texts_per_second(connection: Connection, batch_keys: sa.Select) -> float | None:
    """Records predicted per second of model time over the ledger batches ``batch_keys``
    selects: Σ ``predicted`` / Σ ``model_seconds`` of those measured (migration 0010), so a
    large batch weighs more than a small one. The current side's batches are those that wrote
    the compared records' current rows, the candidate's its rollout's batches. None when no
    batch has a measure (settled before 0010, pruned by retention, or none yet)."""
    batches = db.prediction_batches
    predicted, seconds = connection.execute(
        sa.select(sa.func.sum(batches.c.predicted), sa.func.sum(batches.c.model_seconds)).where(
            batches.c.batch_key.in_(batch_keys.scalar_subquery()),
            batches.c.model_seconds.is_not(None),
        )
    ).one()
    if not seconds:
        return None
    return float(predicted) / float(seconds)


def _dead_letter_counts(connection: Connection, candidate_digest: str) -> dict[str, int]:
    """Distinct records with an open dead letter of the rollout, by ``DeadLetterKind``.

    Open only: a dead letter is resolved when the candidate predicts its record (after a
    replay into the rollout), and then the record is compared instead. A record refused twice
    counts once, under its latest dead letter's kind.
    """
    table = db.dead_letters
    latest = (
        sa.select(table.c.record_id, sa.func.max(table.c.id).label("id"))
        .where(
            table.c.rollout == candidate_digest,
            table.c.resolved_at.is_(None),
            table.c.record_id.is_not(None),
        )
        .group_by(table.c.record_id)
        .subquery()
    )
    kind = sa.case(
        (table.c.source == DeadLetterSource.MODEL, DeadLetterKind.REFUSED.value),
        (table.c.reason == UNKNOWN_RECORD, DeadLetterKind.MISSING.value),
        else_=DeadLetterKind.FAILED.value,
    )
    counts = {str(k): 0 for k in DeadLetterKind}
    rows = connection.execute(
        sa.select(kind, sa.func.count())
        .select_from(latest.join(table, table.c.id == latest.c.id))
        .group_by(kind)
    )
    counts.update({str(name): count for name, count in rows})
    return counts


def _locked_status(connection: Connection, candidate_digest: str) -> RolloutStatus | None:
    """The rollout's status, its row locked until the transaction ends (None: no such row)."""
    status = locked_rollout_status(connection, candidate_digest)
    return RolloutStatus(status) if status is not None else None


def _set_status(
    connection: Connection, candidate_digest: str, status: RolloutStatus, now: datetime
) -> None:
    table = db.rollouts
    connection.execute(
        sa.update(table)
        .where(table.c.candidate == candidate_digest)
        .values(status=status, updated_at=now)
    )


def _open_requests(candidate_digest: str) -> sa.Select:
    requests, batches = db.prediction_requests, db.rollout_batches
    return (
        sa.select(requests.c.record_id)
        .join(batches, batches.c.batch_key == requests.c.batch_key)
        .where(
            batches.c.candidate == candidate_digest,
            requests.c.status.in_([str(s) for s in OPEN_REQUEST_STATUSES]),
        )
    )


def start(
    engine: Engine,
    configuration: Configuration,
    record_ids: Sequence[int],
    *,
    batch_size: int,
    now: datetime,
    model_url: str | None = None,
) -> Started:
    """Request candidate predictions of ``record_ids`` as ledger batches, in one transaction.

    Idempotent: records that already have a candidate row or an open request in this rollout
    are skipped, so starting again after a crash or a dead-lettered batch requests only what is
    missing. A discarded rollout runs again; a promoted one raises ``RolloutStateError``.
    ``model_url``: the model server its batches go to (None: the deployment's); starting again
    sets it to the one given now (the same weights served elsewhere keep the same digest).
    """
    digest = configuration.digest
    with engine.begin() as connection:
        status = _locked_status(connection, digest)
        if status is RolloutStatus.PROMOTED:
            raise RolloutStateError(
                f"rollout {digest} was promoted already; its predictions are current"
            )
        if status is None:
            register_configuration(connection, configuration, now=now)
            connection.execute(
                db.rollouts.insert().values(
                    candidate=digest,
                    status=RolloutStatus.RUNNING,
                    created_at=now,
                    updated_at=now,
                    model_url=model_url,
                )
            )
        else:
            if status is RolloutStatus.DISCARDED:
                _set_status(connection, digest, RolloutStatus.RUNNING, now)
            connection.execute(
                sa.update(db.rollouts)
                .where(db.rollouts.c.candidate == digest)
                .values(model_url=model_url)
            )
        skip: set[int] = set(connection.execute(_open_requests(digest)).scalars())
        table = db.predictions
        ids = sorted(set(record_ids))
        for chunk in chunked(ids, db.IN_CHUNK):
            skip.update(
                connection.execute(
                    sa.select(table.c.record_id).where(
                        table.c.configuration == digest, table.c.record_id.in_(chunk)
                    )
                ).scalars()
            )
        todo = [record_id for record_id in ids if record_id not in skip]
        batch_keys = ledger.write_batches(
            connection, todo, source=ROLLOUT_SOURCE, batch_size=batch_size, now=now
        )
        if batch_keys:
            connection.execute(
                db.rollout_batches.insert(),
                [{"batch_key": key, "candidate": digest} for key in batch_keys],
            )
    return Started(
        candidate=digest, requested=len(todo), skipped=len(ids) - len(todo), batch_keys=batch_keys
    )


def candidate_of_batch(engine: Engine, batch_key: str) -> Candidate | None:
    """The candidate a ledger batch predicts, or None for an ordinary batch."""
    batches, rollouts = db.rollout_batches, db.rollouts
    configurations = db.prediction_configurations
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(rollouts.c.status, rollouts.c.model_url, configurations)
            .select_from(batches)
            .join(rollouts, rollouts.c.candidate == batches.c.candidate)
            .join(configurations, configurations.c.digest == batches.c.candidate)
            .where(batches.c.batch_key == batch_key)
        ).one_or_none()
    if row is None:
        return None
    configuration = Configuration(
        model=ModelIdentity(row.model, row.model_digest),
        parameters=Parameters(
            candidate_labels=tuple(row.candidate_labels),
            hypothesis_template=row.hypothesis_template,
            label_descriptions=row.label_descriptions or {},
            multi_label=bool(row.multi_label),
        ),
    )
    if configuration.digest != row.digest:
        raise ValueError(
            f"batch {batch_key}: the stored configuration of rollout {row.digest} digests to "
            f"{configuration.digest}; the digest rule changed (receipts.py), start it again"
        )
    return Candidate(
        digest=row.digest,
        configuration=configuration,
        status=RolloutStatus(row.status),
        model_url=row.model_url,
    )


def model_url_of_batch(engine: Engine, batch_key: str) -> str | None:
    """The model server a ledger batch goes to when its rollout names one; None: the
    deployment's (an ordinary batch, or a rollout of the deployment's own server)."""
    batches, rollouts = db.rollout_batches, db.rollouts
    with engine.connect() as connection:
        return connection.execute(
            sa.select(rollouts.c.model_url)
            .join(batches, batches.c.candidate == rollouts.c.candidate)
            .where(batches.c.batch_key == batch_key)
        ).scalar_one_or_none()


def progress(engine: Engine, candidate_digest: str) -> Progress:
    """The rollout's status and counts; ``UnknownCandidateError`` when no rollout has it."""
    requests, batches = db.prediction_requests, db.rollout_batches
    with engine.connect() as connection:
        status = connection.execute(
            sa.select(db.rollouts.c.status).where(db.rollouts.c.candidate == candidate_digest)
        ).scalar_one_or_none()
        if status is None:
            raise UnknownCandidateError(
                f"no rollout of configuration {candidate_digest!r}; `batchinfer rollout start` "
                "begins one"
            )
        of_rollout = (
            sa.select(sa.func.count())
            .select_from(requests)
            .join(batches, batches.c.batch_key == requests.c.batch_key)
            .where(batches.c.candidate == candidate_digest)
        )
        requested = connection.execute(of_rollout).scalar_one()
        still_open = connection.execute(
            of_rollout.where(requests.c.status.in_([str(s) for s in OPEN_REQUEST_STATUSES]))
        ).scalar_one()
        predicted = connection.execute(
            sa.select(sa.func.count()).where(db.predictions.c.configuration == candidate_digest)
        ).scalar_one()
    return Progress(
        candidate=candidate_digest,
        status=RolloutStatus(status),
        requested=requested,
        open=still_open,
        predicted=predicted,
    )


def current_records(engine: Engine, *, sample: int | None = None) -> list[int]:
    """The records with a current prediction, by id; the first ``sample`` of them if given."""
    table = db.predictions
    query = sa.select(table.c.record_id).where(table.c.is_current.is_(True))
    with engine.connect() as connection:
        return list(connection.execute(query.order_by(table.c.record_id).limit(sample)).scalars())


def summary(engine: Engine, candidate_digest: str) -> dict[str, Any]:
    """What ``batchinfer rollout report`` prints: the report (once any candidate row exists)
    and the rollout's progress (for rollouts started through runs)."""
    found: dict[str, Any] = {"candidate": candidate_digest}
    try:
        found["progress"] = progress(engine, candidate_digest).as_json()
    except UnknownCandidateError:
        found["progress"] = None  # candidate rows written before rollouts had runs
    try:
        found.update(report(engine, candidate_digest).as_json())
    except UnknownCandidateError:
        if found["progress"] is None:
            raise
        found["compared"] = 0  # started, no candidate row yet
    return found


def running_rollouts(engine: Engine) -> list[str]:
    """The candidates of the rollouts still running, oldest first."""
    table = db.rollouts
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(table.c.candidate)
                .where(table.c.status == RolloutStatus.RUNNING)
                .order_by(table.c.created_at, table.c.candidate)
            ).scalars()
        )


def promote(engine: Engine, candidate_digest: str, *, now: datetime | None = None) -> int:
    """Make every candidate row its record's current one, in one transaction; returns how many.

    First the rows it replaces stop being current, then the candidate's become current: the
    partial unique index (one current row per record) holds after each statement. A rollout
    with requests still open raises ``RolloutStateError`` (promoting half a rollout would leave
    the rest under the old configuration); candidate rows written without a rollout (before
    round 2) are promoted as they are.

    The rollout's open dead letters become ordinary ones in the same transaction: the candidate
    is the current configuration from the commit on, so a replay publishes them as normal
    requests and a current prediction resolves them (``ledger.replay``). The rollout's row is
    locked first (``locked_rollout_status``), so a replay into the rollout either commits its
    batch before the open requests are counted, or finds the rollout promoted.
    """
    table = db.predictions
    of_candidate = sa.select(table.c.record_id).where(table.c.configuration == candidate_digest)
    with engine.begin() as connection:
        status = _locked_status(connection, candidate_digest)
        if status is RolloutStatus.DISCARDED:
            raise RolloutStateError(
                f"rollout {candidate_digest} was discarded; `rollout start` runs it again"
            )
        if status is RolloutStatus.RUNNING:
            still_open = connection.execute(
                sa.select(sa.func.count()).select_from(_open_requests(candidate_digest).subquery())
            ).scalar_one()
            if still_open:
                raise RolloutStateError(
                    f"rollout {candidate_digest} has {still_open} requests still open; wait for "
                    "its runs (`rollout report` shows progress), or discard it"
                )
            _set_status(connection, candidate_digest, RolloutStatus.PROMOTED, now or db.utcnow())
            letters = db.dead_letters
            connection.execute(
                sa.update(letters)
                .where(letters.c.rollout == candidate_digest, letters.c.resolved_at.is_(None))
                .values(rollout=None)
            )
        connection.execute(
            sa.update(table)
            .where(
                table.c.is_current.is_(True),
                table.c.configuration != candidate_digest,
                table.c.record_id.in_(of_candidate.scalar_subquery()),
            )
            .values(is_current=False)
        )
        return connection.execute(
            sa.update(table)
            .where(table.c.configuration == candidate_digest, table.c.is_current.is_(False))
            .values(is_current=True)
        ).rowcount


def discard(engine: Engine, candidate_digest: str, *, now: datetime | None = None) -> int:
    """Abort a rollout: close it, then delete the candidate's rows that are not current.

    Closing first (the rollout's row, locked) means a batch settling afterwards writes nothing
    (``ledger.runs.rollout_is_running``); its runs still finish, without calling the model.
    The rollout's open dead letters are resolved (``resolved_by_run`` ``DISCARDED_BY``): no
    candidate will ever be asked for them, and the records' current predictions never were
    in question; starting the rollout again requests them anew. Returns how many rows were
    deleted.
    """
    table = db.predictions
    when = now or db.utcnow()
    with engine.begin() as connection:
        if _locked_status(connection, candidate_digest) is not None:
            _set_status(connection, candidate_digest, RolloutStatus.DISCARDED, when)
        letters = db.dead_letters
        connection.execute(
            sa.update(letters)
            .where(letters.c.rollout == candidate_digest, letters.c.resolved_at.is_(None))
            .values(resolved_at=when, resolved_by_run=DISCARDED_BY)
        )
        return connection.execute(
            sa.delete(table).where(
                table.c.configuration == candidate_digest, table.c.is_current.is_(False)
            )
        ).rowcount


def without_candidate(
    engine: Engine, record_ids: Iterable[int], candidate_digest: str
) -> list[int]:
    """Those of ``record_ids`` with no candidate row yet: a rollout cut off resumes with these."""
    table = db.predictions
    ids = sorted(set(record_ids))
    done: set[int] = set()
    with engine.connect() as connection:
        for chunk in chunked(ids, db.IN_CHUNK):
            done.update(
                connection.execute(
                    sa.select(table.c.record_id).where(
                        table.c.configuration == candidate_digest, table.c.record_id.in_(chunk)
                    )
                ).scalars()
            )
    return [record_id for record_id in ids if record_id not in done]
