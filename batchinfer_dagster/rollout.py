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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked

# Disagreements listed in a report, largest margin first.
DISAGREEMENTS_SHOWN = 10


class UnknownCandidateError(LookupError):
    """No candidate predictions under that configuration digest."""


@dataclass(frozen=True)
class RolloutReport:
    """What ``report`` computed; ``as_json`` is what ``batchinfer rollout report`` prints."""

    candidate: str
    compared: int
    agreeing: int
    confusion: dict[str, dict[str, int]]
    mean_abs_top_score_delta: float
    disagreements: list[dict[str, Any]]

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
        exists = sa.exists().where(db.predictions.c.configuration == candidate_digest)
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
    confusion: dict[str, dict[str, int]] = {}
    for now, then, count in cells:
        confusion.setdefault(now, {})[then] = count
    return RolloutReport(
        candidate=candidate_digest,
        compared=sum(count for _, _, count in cells),
        agreeing=sum(count for now, then, count in cells if now == then),
        confusion=confusion,
        mean_abs_top_score_delta=float(mean_delta or 0.0),
        disagreements=[dict(row._mapping) for row in largest],
    )


def promote(engine: Engine, candidate_digest: str) -> int:
    """Make every candidate row its record's current one, in one transaction; returns how many.

    First the rows it replaces stop being current, then the candidate's become current: the
    partial unique index (one current row per record) holds after each statement.
    """
    table = db.predictions
    of_candidate = sa.select(table.c.record_id).where(table.c.configuration == candidate_digest)
    with engine.begin() as connection:
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


def discard(engine: Engine, candidate_digest: str) -> int:
    """Delete the candidate's rows that are not current; returns how many."""
    table = db.predictions
    with engine.begin() as connection:
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
