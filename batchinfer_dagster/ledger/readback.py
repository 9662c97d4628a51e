"""What a batch stored, read back: the records it must have predicted and their predictions.

The asset checks of a ``predictions`` partition read these, right after the run wrote them.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.states import RequestStatus
from batchinfer_protocol.zero_shot import Prediction


def batch_record_ids(engine: Engine, batch_key: str) -> list[int]:
    """Distinct record ids of the batch's done requests: the records it must have predicted."""
    table = db.prediction_requests
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(table.c.record_id)
                .where(table.c.batch_key == batch_key, table.c.status == RequestStatus.DONE)
                .distinct()
                .order_by(table.c.record_id)
            ).scalars()
        )


def read_predictions(
    engine: Engine, record_ids: Iterable[int], *, model_name: str, configuration: str = ""
) -> dict[int, Prediction]:
    """The current stored predictions of ``model_name`` for the given records.

    Current rows only: a record keeps its earlier rows under other configurations (``receipts``),
    and "the prediction" of a record is its current row. With ``configuration`` (a rollout's
    candidate digest), that configuration's rows instead, current or not.
    """
    table = db.predictions
    which = (
        table.c.configuration == configuration if configuration else table.c.is_current.is_(True)
    )
    found: dict[int, Prediction] = {}
    with engine.connect() as connection:
        for chunk in chunked(sorted(set(record_ids)), db.IN_CHUNK):
            rows = connection.execute(
                sa.select(
                    table.c.record_id, table.c.sequence, table.c.labels, table.c.scores
                ).where(
                    table.c.model == model_name,
                    which,
                    table.c.record_id.in_(chunk),
                )
            )
            found.update(
                {row.record_id: Prediction(row.sequence, row.labels, row.scores) for row in rows}
            )
    return found
