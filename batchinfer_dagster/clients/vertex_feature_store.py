"""The Vertex AI Feature Store backend: a BigQuery source table and an online-store FeatureView.

The source table holds **one row per record**: Vertex AI Feature Store reads a BigQuery table
source as "each row holds the latest values of a unique ID; multiple occurrences of the same
entity ID in different rows are not supported" ("Prepare data source", Vertex AI Feature Store
documentation). An incremental import therefore loads the records changed since its watermark
(``feature_import.py``) into a staging table of its own (a load job: no query bytes) and merges
it into the source table with one ``MERGE``: a changed record's row is updated in place, a new
one inserted, and a row older than the one stored (an import retried after a later one) changes
nothing. The staging table is the import's alone (a unique name in the staging dataset
``<dataset>_staging``, which Terraform creates with a one-day default table expiration), so
two imports at once cannot overwrite each other's rows, and it is deleted after the merge (a
crashed import's table expires). The source table stays as large as the record count; the
MERGE reads it once per import (BigQuery bills the bytes it scans: the source table's size).

The window's deleted records (``feature_import.iter_deleted``) then leave the source table with
a ``DELETE … WHERE entity_id IN UNNEST(@ids)``, and the sync removes them from the online store.
Every row of one import is stamped with the import's own time read from the database
(``ImportWindow.opened_at``), so the merge's "newer wins" compares imports, never the clocks of
the hosts that wrote the records.

A full import (``import-data --full``) replaces the table's rows with a snapshot
(``WRITE_TRUNCATE_DATA``: the rows are replaced, the table's schema, which Terraform owns with
its column descriptions, is kept; ``WRITE_TRUNCATE`` would replace the schema with the load's);
the snapshot has one row per record already. Then the FeatureView is synced and the import waits
for that sync, because a record is only fetchable online once its sync has finished; an import
with nothing new neither loads nor syncs.

Fetching tells a missing FeatureView from a missing record: FetchFeatureValues answers NOT_FOUND
for both, so the view is looked up once before the first fetch, and a NOT_FOUND after that means
the record is not synced yet.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from google.api_core import exceptions as gexc
from google.api_core import retry as api_retry
from google.cloud import bigquery
from google.cloud.aiplatform_v1 import (
    FeatureOnlineStoreAdminServiceClient,
    FeatureOnlineStoreServiceClient,
    FeatureViewDataFormat,
    FeatureViewDataKey,
    FeatureViewSync,
    FetchFeatureValuesRequest,
    FetchFeatureValuesResponse,
)
from google.cloud.aiplatform_v1.services.feature_online_store_admin_service.transports import (
    FeatureOnlineStoreAdminServiceGrpcTransport,
)
from google.cloud.aiplatform_v1.services.feature_online_store_service.transports import (
    FeatureOnlineStoreServiceGrpcTransport,
)
from sqlalchemy import Engine

from batchinfer_dagster import db, feature_import
from batchinfer_dagster.clients.bigquery_jobs import load_spool, staging_table
from batchinfer_dagster.clients.feature_store import (
    FeatureStore,
    FeatureStoreUnavailableError,
    ImportResult,
    window_details,
)
from batchinfer_dagster.clients.google_grpc import grpc_client_kwargs
from batchinfer_dagster.feature_import import ImportWindow
from batchinfer_dagster.staleness import store_window_digests

TEXT_FEATURE = "text"
SOURCE_SCHEMA = (
    bigquery.SchemaField("entity_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("text", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("feature_timestamp", "TIMESTAMP", mode="REQUIRED"),
)
# Online fetches in flight at once: FetchFeatureValues takes one key per call, so many ids need
# concurrency, bounded to stay inside the per-project QPS quota.
MAX_FETCH_CONCURRENCY = 16
SYNC_POLL_SECONDS = 10.0


@dataclass(frozen=True)
class VertexFeatureView:
    """The Vertex AI Feature Store parts the import and the fetches use (Terraform makes them).

    The config of ``VertexFeatureStore``, built by ``VertexFeatureStoreResource`` from the
    ``BATCHINFER_VERTEX_*`` settings; every field is required (the defaults live in ``Settings``).
    """

    project: str | None
    bigquery_table: str | None
    region: str
    online_store: str
    feature_view: str
    # Endpoint overrides ("host:port"; None: the service's own): the regional admin API, and
    # the online store's serving endpoint (an Optimized store serves from its own domain).
    admin_endpoint: str | None
    serving_endpoint: str | None
    sync_timeout_seconds: float


class VertexFeatureStoreError(FeatureStoreUnavailableError):
    """A Vertex AI or BigQuery call failed; the message names the resource and what to check."""


def _require(value: str | None, variable: str, example: str) -> str:
    if not value:
        raise VertexFeatureStoreError(
            f"BATCHINFER_FEATURE_STORE=vertex needs {variable} (e.g. {example}); "
            "`terraform output batchinfer_env` lists the values"
        )
    return value


def serving_endpoint(admin: FeatureOnlineStoreAdminServiceClient, store_name: str) -> str:
    """Where ``FetchFeatureValues`` for ``store_name`` must go.

    An Optimized online store serves only from its own public endpoint domain, which exists
    once the store has finished provisioning (after its first sync); a Bigtable store serves
    from the regional endpoint.
    """
    try:
        store = admin.get_feature_online_store(name=store_name)
    except gexc.GoogleAPICallError as exc:
        raise VertexFeatureStoreError(
            f"looking up online store {store_name} failed: {exc}; check that this service "
            "account holds aiplatform.featureOnlineStores.get (terraform/iam.tf)"
        ) from exc
    if "optimized" not in store:
        region = store_name.split("/")[3]
        return f"{region}-aiplatform.googleapis.com"
    endpoint = store.dedicated_serving_endpoint
    if endpoint.private_service_connect_config.enable_private_service_connect:
        raise VertexFeatureStoreError(
            f"online store {store_name} serves only through Private Service Connect: set "
            "BATCHINFER_VERTEX_SERVING_ENDPOINT to the PSC endpoint address"
        )
    if not endpoint.public_endpoint_domain_name:
        raise VertexFeatureStoreError(
            f"online store {store_name} has no public endpoint yet: it appears when the store "
            "is provisioned, after the first FeatureView sync (`batchinfer import-data`)"
        )
    return endpoint.public_endpoint_domain_name


def merge_statement(table: str, staging: str) -> str:
    """Staged rows into the source table: one row per entity id, the newest kept.

    The staged rows come from ``data_points``, one per record; the QUALIFY keeps the source to
    one row per id should a staging table ever hold two. A staged row replaces the stored one
    unless it is older (an import retried after a later one). ``WHERE TRUE``: BigQuery requires
    a WHERE, GROUP BY or HAVING beside a QUALIFY ("Query syntax", QUALIFY clause).
    """
    return (
        f"MERGE INTO `{table}` AS target USING ("
        f"SELECT entity_id, text, feature_timestamp FROM `{staging}` WHERE TRUE "
        "QUALIFY ROW_NUMBER() OVER "
        "(PARTITION BY entity_id ORDER BY feature_timestamp DESC) = 1"
        ") AS source ON target.entity_id = source.entity_id "
        "WHEN MATCHED AND source.feature_timestamp >= target.feature_timestamp THEN "
        "UPDATE SET text = source.text, feature_timestamp = source.feature_timestamp "
        "WHEN NOT MATCHED THEN INSERT (entity_id, text, feature_timestamp) "
        "VALUES (source.entity_id, source.text, source.feature_timestamp)"
    )


def listing_query(table: str) -> str:
    """The first ``@limit`` records by id, the latest row of each (``WHERE TRUE``: as in
    ``merge_statement``)."""
    return (
        f"SELECT entity_id, text FROM `{table}` WHERE TRUE "
        "QUALIFY ROW_NUMBER() OVER "
        "(PARTITION BY entity_id ORDER BY feature_timestamp DESC) = 1 "
        "ORDER BY SAFE_CAST(entity_id AS INT64) LIMIT @limit"
    )


def count_query(table: str) -> str:
    """Distinct entity ids: appended versions of one record count once."""
    return f"SELECT COUNT(DISTINCT entity_id) AS records FROM `{table}`"


def deletion_statement(table: str) -> str:
    """The rows of the ids in the ``@ids`` array parameter (ARRAY<STRING>) removed."""
    return f"DELETE FROM `{table}` WHERE entity_id IN UNNEST(@ids)"


def sync_finished(sync: FeatureViewSync) -> bool:
    """A sync is over when it has an end time or a final status (error syncs may lack the end)."""
    pb = FeatureViewSync.pb(sync)
    ended = pb.HasField("run_time") and pb.run_time.HasField("end_time")
    return ended or pb.HasField("final_status")


class VertexFeatureStore(FeatureStore):
    """``data_points`` → BigQuery source table → FeatureView sync; fetch from the online store."""

    def __init__(
        self,
        view: VertexFeatureView,
        engine: Engine,
        *,
        bigquery_client: bigquery.Client | None = None,
        poll_seconds: float = SYNC_POLL_SECONDS,
        fetch_retry: api_retry.Retry | None = None,
        max_fetch_concurrency: int = MAX_FETCH_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = db.utcnow,
    ) -> None:
        project = _require(view.project, "BATCHINFER_VERTEX_PROJECT", "my-project")
        table = _require(
            view.bigquery_table,
            "BATCHINFER_VERTEX_BIGQUERY_TABLE",
            "my-project.batchinfer.records",
        )
        self.view = view
        self.engine = engine
        self.table = bigquery.TableReference.from_string(table, default_project=project)
        self.store_name = (
            f"projects/{project}/locations/{view.region}/featureOnlineStores/{view.online_store}"
        )
        self.view_name = f"{self.store_name}/featureViews/{view.feature_view}"
        self.bigquery = bigquery_client or bigquery.Client(project=project)
        admin_endpoint = view.admin_endpoint or f"{view.region}-aiplatform.googleapis.com"
        self.admin = FeatureOnlineStoreAdminServiceClient(
            **grpc_client_kwargs(FeatureOnlineStoreAdminServiceGrpcTransport, admin_endpoint)
        )
        self._serving: FeatureOnlineStoreServiceClient | None = None
        self.poll_seconds = poll_seconds
        self.fetch_retry = fetch_retry or api_retry.Retry(
            predicate=api_retry.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded),
            initial=0.5,
            maximum=5.0,
            timeout=60.0,
        )
        self.max_fetch_concurrency = max_fetch_concurrency
        self.clock = clock
        self.wall_clock = wall_clock
        # The watermark belongs to the BigQuery table the import writes.
        self.target = f"vertex:{self.table}"

    @property
    def serving(self) -> FeatureOnlineStoreServiceClient:
        """The online-serving client, made on first fetch (its endpoint may not exist earlier),
        after checking that the FeatureView exists."""
        if self._serving is None:
            self.check_feature_view()
            endpoint = self.view.serving_endpoint or serving_endpoint(self.admin, self.store_name)
            self._serving = FeatureOnlineStoreServiceClient(
                **grpc_client_kwargs(FeatureOnlineStoreServiceGrpcTransport, endpoint)
            )
        return self._serving

    def check_feature_view(self) -> None:
        """Raise unless the FeatureView exists.

        Without this, a wrong or deleted view would answer NOT_FOUND for every record, exactly
        like records that are not synced yet: every request would wait in ``waiting_features``
        and then be dead-lettered, none with the real cause.
        """
        try:
            self.admin.get_feature_view(name=self.view_name)
        except gexc.NotFound as exc:
            raise VertexFeatureStoreError(
                f"FeatureView {self.view_name} does not exist: check BATCHINFER_VERTEX_PROJECT, "
                "_REGION, _ONLINE_STORE and _FEATURE_VIEW against `terraform output "
                "batchinfer_env` (Terraform creates the view)"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise VertexFeatureStoreError(
                f"looking up FeatureView {self.view_name} failed: {exc}"
            ) from exc

    def import_records(self, *, full: bool = False) -> ImportResult:
        """One import at a time into this target (``feature_import.import_lock``)."""
        with feature_import.import_lock(self.engine, self.target):
            return self._import_locked(full=full)

    def _import_locked(self, *, full: bool) -> ImportResult:
        window = feature_import.open_window(self.engine, self.target, full=full)
        details: dict[str, object] = {
            "bigquery_table": str(self.table),
            "feature_view": self.view_name,
            **window_details(window),
        }
        with tempfile.TemporaryFile() as spool:
            rows = self._write_rows(spool, window)
            if rows or full:
                self._load(spool, full=full)
        # A full import's snapshot holds only the records that exist; an incremental one
        # removes the window's deleted records after merging its changed ones.
        deleted = 0 if full else self._delete_rows(window)
        details["rows_deleted"] = deleted
        if rows or deleted or full:
            sync = self._sync_and_wait()
            details["feature_view_sync"] = sync.name
            details["rows_synced"] = FeatureViewSync.pb(sync).sync_summary.row_synced
        # After the sync, so the digests never run ahead of what the store serves.
        store_window_digests(self.engine, window, now=self.wall_clock())
        feature_import.commit_watermark(self.engine, window, rows)
        return ImportResult(
            rows_imported=rows, total_records=self._count_records(), details=details
        )

    def _write_rows(self, spool: IO[bytes], window: ImportWindow) -> int:
        """Newline-delimited JSON of the window's records, on disk so memory stays bounded.

        Every row's ``feature_timestamp`` is the window's ``opened_at`` (the database's time,
        increasing from one import of this table to the next), not the record's
        ``updated_at``: that is the writing host's clock, and a writer whose clock stepped back
        would stamp an edit older than the version stored, which the merge then keeps.
        """
        stamp = window.opened_at.isoformat()
        rows = 0
        for chunk in feature_import.iter_changed(self.engine, window):
            for record in chunk:
                line = {
                    "entity_id": str(record.id),
                    "text": record.text,
                    "feature_timestamp": stamp,
                }
                spool.write(json.dumps(line).encode("utf-8") + b"\n")
            rows += len(chunk)
        return rows

    def _delete_rows(self, window: ImportWindow) -> int:
        """Remove the window's deleted records from the source table; the rows BigQuery deleted.

        One DML statement per page of ids (``feature_import.IMPORT_CHUNK``), the ids as an
        array query parameter. A deleted record's id never returns (ids are not reused), so
        deleting after the merge cannot remove a newer version. The next sync drops the rows
        from an Optimized online store, which serves what its source holds ("Delete a feature
        view": only Bigtable online serving keeps the records deleted from the source). A
        failed statement fails the import before its watermark moves, so the next import
        deletes the same ids again.
        """
        query = deletion_statement(str(self.table))
        deleted = 0
        for record_ids in feature_import.iter_deleted(self.engine, window):
            ids = [str(record_id) for record_id in record_ids]
            config = bigquery.QueryJobConfig(
                query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", ids)]
            )
            try:
                result = self.bigquery.query_and_wait(
                    query, job_config=config, wait_timeout=self.view.sync_timeout_seconds
                )
            except gexc.GoogleAPICallError as exc:
                raise VertexFeatureStoreError(
                    f"deleting {len(ids)} deleted records (ids {ids[0]}…{ids[-1]}) from BigQuery "
                    f"table {self.table} failed: {exc}. Check that this service account may "
                    "update the table's data (Terraform grants it); the next import deletes "
                    "them again."
                ) from exc
            deleted += result.num_dml_affected_rows or 0
        return deleted

    def _load(self, spool: IO[bytes], *, full: bool) -> None:
        """The spooled rows into the source table: replaced by a full import, else merged."""
        if full:
            self._load_file(spool, self.table, bigquery.WriteDisposition.WRITE_TRUNCATE_DATA)
            return
        staging = staging_table(self.table)
        self._load_file(spool, staging, bigquery.WriteDisposition.WRITE_EMPTY)
        try:
            self._merge(staging)
        finally:
            self._drop(staging)

    def _drop(self, staging: bigquery.TableReference) -> None:
        """Delete an import's staging table; the dataset's expiration is only the fallback."""
        try:
            self.bigquery.delete_table(staging, not_found_ok=True)
        except gexc.GoogleAPICallError as exc:
            raise VertexFeatureStoreError(
                f"deleting staging table {staging} failed: {exc}. Check that this service "
                "account may delete tables in the staging dataset (Terraform grants it); the "
                "table expires within a day by itself, and the next import merges again."
            ) from exc

    def _load_file(
        self, spool: IO[bytes], table: bigquery.TableReference, disposition: str
    ) -> None:
        size = spool.tell()
        try:
            load_spool(
                self.bigquery,
                spool,
                table,
                schema=SOURCE_SCHEMA,
                disposition=disposition,
                timeout_seconds=self.view.sync_timeout_seconds,
            )
        except gexc.GoogleAPICallError as exc:
            raise VertexFeatureStoreError(
                f"loading {size} bytes into BigQuery table {table} failed: {exc}. Check "
                "that the source table exists with columns entity_id, text, feature_timestamp "
                "and the staging dataset beside it (Terraform creates both) and that this "
                "service account may write to them."
            ) from exc

    def _merge(self, staging: bigquery.TableReference) -> None:
        """Staged rows into the source table (``merge_statement``)."""
        query = merge_statement(str(self.table), str(staging))
        try:
            self.bigquery.query_and_wait(query, wait_timeout=self.view.sync_timeout_seconds)
        except gexc.GoogleAPICallError as exc:
            raise VertexFeatureStoreError(
                f"merging staging table {staging} into BigQuery table {self.table} failed: {exc}"
            ) from exc

    def _sync_and_wait(self) -> FeatureViewSync:
        try:
            name = self.admin.sync_feature_view(feature_view=self.view_name).feature_view_sync
        except gexc.GoogleAPICallError as exc:
            raise VertexFeatureStoreError(
                f"starting a sync of FeatureView {self.view_name} failed: {exc}"
            ) from exc
        timeout = self.view.sync_timeout_seconds
        deadline = self.clock() + timeout
        while True:
            sync = self.admin.get_feature_view_sync(name=name)
            if sync_finished(sync):
                break
            if self.clock() >= deadline:
                raise VertexFeatureStoreError(
                    f"FeatureView sync {name} did not finish within {timeout:g} s "
                    "(BATCHINFER_VERTEX_SYNC_TIMEOUT_SECONDS); it may still be running: look at "
                    "it in the console and import again, or raise the timeout"
                )
            time.sleep(self.poll_seconds)
        status = FeatureViewSync.pb(sync).final_status
        if status.code != 0:
            raise VertexFeatureStoreError(
                f"FeatureView sync {name} failed (code {status.code}): {status.message}"
            )
        return sync

    def fetch(self, record_ids: Sequence[int]) -> dict[int, str]:
        ids = sorted(set(record_ids))
        if not ids:
            return {}
        serving = self.serving
        workers = min(self.max_fetch_concurrency, len(ids))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            texts = list(pool.map(lambda record_id: self._fetch_one(serving, record_id), ids))
        return {i: text for i, text in zip(ids, texts, strict=True) if text is not None}

    def _fetch_one(self, serving: FeatureOnlineStoreServiceClient, record_id: int) -> str | None:
        request = FetchFeatureValuesRequest(
            feature_view=self.view_name,
            data_key=FeatureViewDataKey(key=str(record_id)),
            data_format=FeatureViewDataFormat.KEY_VALUE,
        )
        try:
            response = serving.fetch_feature_values(request=request, retry=self.fetch_retry)
        except gexc.NotFound:
            return None
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise VertexFeatureStoreError(
                f"fetching record {record_id} from FeatureView {self.view_name} failed: {exc}"
            ) from exc
        return self._text_of(response, record_id)

    def _text_of(self, response: FetchFeatureValuesResponse, record_id: int) -> str:
        for feature in response.key_values.features:
            if feature.name == TEXT_FEATURE:
                return feature.value.string_value
        names = [feature.name for feature in response.key_values.features]
        raise VertexFeatureStoreError(
            f"FeatureView {self.view_name} answered record {record_id} without a "
            f"{TEXT_FEATURE!r} feature (features: {names}); its BigQuery source must have a "
            "STRING column named text"
        )

    def list_records(self, limit: int) -> tuple[list[tuple[int, str]], int]:
        query = listing_query(str(self.table))
        config = bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("limit", "INT64", limit)]
        )
        try:
            rows = self.bigquery.query_and_wait(query, job_config=config)
            records = [(int(row["entity_id"]), row["text"]) for row in rows]
        except gexc.GoogleAPICallError as exc:
            raise VertexFeatureStoreError(
                f"reading BigQuery table {self.table} failed: {exc}"
            ) from exc
        return records, self._count_records()

    def _count_records(self) -> int:
        """Distinct entity ids in the source table (appended versions counted once)."""
        query = count_query(str(self.table))
        try:
            rows = list(self.bigquery.query_and_wait(query))
        except gexc.NotFound:
            return 0
        except gexc.GoogleAPICallError as exc:
            raise VertexFeatureStoreError(
                f"counting the records of BigQuery table {self.table} failed: {exc}"
            ) from exc
        return int(rows[0]["records"]) if rows else 0

    def close(self) -> None:
        """Release the gRPC channels and the BigQuery HTTP session."""
        self.admin.transport.close()
        if self._serving is not None:
            self._serving.transport.close()
        self.bigquery.close()
