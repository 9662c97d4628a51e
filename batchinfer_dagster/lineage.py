"""A record's lineage: its text's digest, and every prediction stored for it with its receipt.

``batchinfer lineage RECORD_ID`` prints these. The current prediction comes first, with the
causes that make it stale (``staleness``); earlier ones (other configurations) follow, newest
first. A receipt older than migration 0005 shows ``"known": false``: only its model is known.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.staleness import Deployment, stale_causes


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def receipt_document(row: sa.Row) -> dict[str, Any]:
    """One stored prediction and what made it, as JSON."""
    return {
        "configuration": row.configuration,
        "current": bool(row.is_current),
        "prediction": {"labels": row.labels, "scores": row.scores},
        "receipt": {
            "known": bool(row.known),
            "model": row.model,
            "model_digest": row.model_digest,
            "candidate_labels": row.candidate_labels,
            "hypothesis_template": row.hypothesis_template,
            "label_descriptions_digest": row.label_descriptions_digest,
            "label_descriptions": row.label_descriptions,
            "multi_label": row.multi_label,
            "text_digest": row.text_digest,
            "run_id": row.run_id,
            "batch_key": row.batch_key,
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
        },
    }


def record_lineage(engine: Engine, record_id: int, deployment: Deployment) -> dict[str, Any] | None:
    """``{"record", "predictions": [current, earlier...]}``; None when the record has neither
    a row in ``data_points`` nor any prediction."""
    p, c = db.predictions, db.prediction_configurations
    records, digests = db.data_points, db.record_text_digests
    with engine.connect() as connection:
        record = connection.execute(
            sa.select(records.c.text, records.c.updated_at, digests.c.text_digest)
            .select_from(records.outerjoin(digests, digests.c.record_id == records.c.id))
            .where(records.c.id == record_id)
        ).one_or_none()
        rows = connection.execute(
            sa.select(
                p,
                c.c.known,
                c.c.model_digest,
                c.c.candidate_labels,
                c.c.hypothesis_template,
                c.c.label_descriptions_digest,
                c.c.label_descriptions,
                c.c.multi_label,
            )
            .select_from(p.join(c, c.c.digest == p.c.configuration))
            .where(p.c.record_id == record_id)
            .order_by(p.c.is_current.desc(), p.c.updated_at.desc(), p.c.configuration)
        ).all()
    if record is None and not rows:
        return None
    documents = [receipt_document(row) for row in rows]
    if documents and documents[0]["current"]:
        documents[0]["stale"] = stale_causes(engine, deployment, record_id)
    return {
        "record": {
            "id": record_id,
            "text": record.text if record is not None else None,
            "updated_at": _iso(record.updated_at) if record is not None else None,
            # The digest of the text the feature store holds (None: not imported since 0005).
            "imported_text_digest": record.text_digest if record is not None else None,
        },
        "predictions": documents,
    }
