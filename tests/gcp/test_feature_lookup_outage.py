"""A denied or failing feature-store look-up (the daemon without its Vertex AI grant, an outage)
costs only the look-up of the waiting requests: the tick still takes in new requests, asks for
their runs and reconciles, and the waiting requests stay waiting for the next tick."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from dagster import DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.feature_store import FeatureStoreUnavailableError
from batchinfer_dagster.clients.vertex_feature_store import VertexFeatureStoreError
from batchinfer_dagster.defs.sensors import process_tick
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import (
    engine_of,
    local_feature_store,
    open_queue,
    publish_json,
    resources_of,
    rows,
)


class DeniedFeatureStore:
    """A feature store whose every fetch is refused, as Vertex AI refuses an account without
    ``aiplatform.featureViews.fetchFeatureValues``; counts the fetches."""

    def __init__(self) -> None:
        self.fetches = 0

    def fetch(self, record_ids: Sequence[int]) -> dict[int, str]:
        self.fetches += 1
        raise VertexFeatureStoreError(
            f"fetching record {record_ids[0]} failed: 403 Permission "
            "'aiplatform.featureViews.fetchFeatureValues' denied"
        )


def test_vertex_errors_are_feature_store_outages() -> None:
    assert issubclass(VertexFeatureStoreError, FeatureStoreUnavailableError)


def test_a_denied_look_up_leaves_intake_runs_and_waiting_requests_alone(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    settings = app_settings
    local_feature_store(settings).upsert([(1, "refund please"), (3, "app crash")])
    publish_json(settings, [{"id": 2}])
    queue = open_queue(settings)
    policy = resources_of(settings)["ledger"]
    try:
        process_tick(
            instance,
            policy,
            queue,
            feature_store=local_feature_store(settings),
            lease_seconds=settings.ack_deadline_seconds,
        )
        # Record 2's run found no features: its request waits, due for a look-up now.
        table = db.prediction_requests
        with engine_of(settings).begin() as connection:
            connection.execute(
                sa.update(table).values(
                    status=ledger.RequestStatus.WAITING_FEATURES,
                    batch_key=None,
                    not_before=db.utcnow(),
                )
            )
        publish_json(settings, [{"id": 3}])
        denied = DeniedFeatureStore()
        outcome = process_tick(
            instance,
            policy,
            queue,
            feature_store=denied,
            features_changed=True,
            lease_seconds=settings.ack_deadline_seconds,
        )
    finally:
        queue.close()

    assert denied.fetches == 1
    assert outcome.accepted == 1
    assert len(outcome.run_requests) == 1
    assert outcome.rebatched == []
    assert outcome.feature_store_error is not None
    assert "fetchFeatureValues' denied" in outcome.feature_store_error
    assert "fetchFeatureValues' denied" in outcome.summary()
    statuses = {row.record_id: row.status for row in rows(settings, db.prediction_requests)}
    assert statuses[2] == ledger.RequestStatus.WAITING_FEATURES
    assert statuses[3] != ledger.RequestStatus.WAITING_FEATURES
