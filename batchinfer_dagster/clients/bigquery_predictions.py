"""The BigQuery predictions table: one row per record and configuration, merged by export.

An export (``prediction_changes``: the rows written and deleted since the last export) spools
its receipts and tombstones as newline-delimited JSON on disk (memory stays bounded whatever the
window's size), loads them into a staging table of its own (a load job: no query bytes, no
streaming-insert buffer that DML cannot touch) and applies them with one ``MERGE`` keyed on
``(record_id, configuration)``: a new row is inserted, a changed one updated, a tombstone
deletes its row, and a staged row older than the stored one (by ``change_seq``, the database's
commit-order number) changes nothing, so a re-run, or an export retried after a later one,
never duplicates a row nor brings an old answer back. The staging table is made and dropped as
for the feature import (``bigquery_jobs``).

Any failed job raises ``PredictionExportError`` naming the rows of the export (how many, which
records, which change numbers) and what to check, and whether it is transient (a refusal
names the permission it lacks); the caller keeps its watermark, so the next export sends the
same rows again.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery
from sqlalchemy import Engine

from batchinfer_dagster.clients.bigquery_jobs import is_transient, load_spool, staging_table
from batchinfer_dagster.prediction_changes import (
    ExportWindow,
    PredictionReceipt,
    PredictionTombstone,
    iter_changed,
    iter_deleted,
)

# The target table's columns (terraform/bigquery.tf declares the same, with descriptions).
PREDICTIONS_SCHEMA = (
    bigquery.SchemaField("record_id", "INT64", mode="REQUIRED"),
    bigquery.SchemaField("configuration", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("model", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("labels", "STRING", mode="REPEATED"),
    bigquery.SchemaField("scores", "FLOAT64", mode="REPEATED"),
    bigquery.SchemaField("top_label", "STRING", mode="NULLABLE"),
    bigquery.SchemaField("top_score", "FLOAT64", mode="NULLABLE"),
    bigquery.SchemaField("text_digest", "STRING", mode="NULLABLE"),
    bigquery.SchemaField("predicted_at", "TIMESTAMP", mode="REQUIRED"),
    bigquery.SchemaField("is_current", "BOOL", mode="REQUIRED"),
    bigquery.SchemaField("change_seq", "INT64", mode="REQUIRED"),
)
KEY = ("record_id", "configuration")
UPDATED = tuple(f.name for f in PREDICTIONS_SCHEMA if f.name not in KEY)
# A staged row: the target's columns, nullable (a tombstone carries only its key and number),
# and ``deleted``.
STAGING_SCHEMA = (
    *(
        bigquery.SchemaField(
            f.name, f.field_type, mode="REPEATED" if f.mode == "REPEATED" else "NULLABLE"
        )
        for f in PREDICTIONS_SCHEMA
    ),
    bigquery.SchemaField("deleted", "BOOL", mode="REQUIRED"),
)


class PredictionExportError(RuntimeError):
    """A BigQuery job of an export failed; the message names the export's rows.

    ``transient``: another try may succeed (``bigquery_jobs.is_transient``: a 5xx or 429
    answer); the export asset retries only those, and fails at once on the others.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ExportedRows:
    """What one export sent: ``written`` receipts and ``deleted`` tombstones, the records and
    change numbers they span (for errors and the asset's metadata)."""

    written: int = 0
    deleted: int = 0
    records: tuple[int, int] | None = None
    changes: tuple[int, int] | None = None

    def with_rows(self, rows: Iterable[PredictionReceipt | PredictionTombstone]) -> ExportedRows:
        records, changes, written, deleted = self.records, self.changes, self.written, self.deleted
        for row in rows:
            records = _span(records, row.record_id)
            changes = _span(changes, row.change_seq)
            if isinstance(row, PredictionTombstone):
                deleted += 1
            else:
                written += 1
        return ExportedRows(written=written, deleted=deleted, records=records, changes=changes)

    def describe(self) -> str:
        """E.g. "3 written and 1 deleted prediction rows (records 4…17, changes 8…9)"."""
        if self.records is None or self.changes is None:
            return "no prediction rows"
        return (
            f"{self.written} written and {self.deleted} deleted prediction rows (records "
            f"{self.records[0]}…{self.records[1]}, changes {self.changes[0]}…{self.changes[1]})"
        )


def _span(span: tuple[int, int] | None, value: int) -> tuple[int, int]:
    return (value, value) if span is None else (min(span[0], value), max(span[1], value))


def staged_row(row: PredictionReceipt | PredictionTombstone) -> dict[str, Any]:
    """The staging table's JSON row of a receipt or a tombstone."""
    if isinstance(row, PredictionTombstone):
        return {
            **{f.name: [] if f.mode == "REPEATED" else None for f in PREDICTIONS_SCHEMA},
            "record_id": row.record_id,
            "configuration": row.configuration,
            "change_seq": row.change_seq,
            "deleted": True,
        }
    return {
        "record_id": row.record_id,
        "configuration": row.configuration,
        "model": row.model,
        "labels": row.labels,
        "scores": row.scores,
        "top_label": row.top_label,
        "top_score": row.top_score,
        "text_digest": row.text_digest,
        "predicted_at": row.predicted_at.isoformat(),
        "is_current": row.is_current,
        "change_seq": row.change_seq,
        "deleted": False,
    }


def merge_statement(target: str, staging: str) -> str:
    """The MERGE of a staging table into the target: the newest staged row per key wins over
    an older or equal stored one; a staged tombstone deletes, a receipt updates or inserts.

    ``WHERE TRUE``: BigQuery requires a WHERE, GROUP BY or HAVING beside a QUALIFY ("Query
    syntax", QUALIFY clause).
    """
    key = " AND ".join(f"target.{name} = source.{name}" for name in KEY)
    newer = "source.change_seq >= target.change_seq"
    columns = ", ".join((*KEY, *UPDATED))
    return (
        f"MERGE INTO `{target}` AS target USING (SELECT * FROM `{staging}` WHERE TRUE "
        "QUALIFY ROW_NUMBER() OVER "
        f"(PARTITION BY {', '.join(KEY)} ORDER BY change_seq DESC) = 1) AS source ON {key} "
        f"WHEN MATCHED AND source.deleted AND {newer} THEN DELETE "
        f"WHEN MATCHED AND NOT source.deleted AND {newer} THEN UPDATE SET "
        + ", ".join(f"{name} = source.{name}" for name in UPDATED)
        + f" WHEN NOT MATCHED AND NOT source.deleted THEN INSERT ({columns}) VALUES ("
        + ", ".join(f"source.{name}" for name in (*KEY, *UPDATED))
        + ")"
    )


def export_error(
    what: str, exc: gexc.GoogleAPIError, *, resource: str, permissions: str, check: str
) -> PredictionExportError:
    """The error of a failed step (``what``: e.g. "merging … into BigQuery table t").

    A refusal (403, not a rate limit) names ``resource`` and the ``permissions`` it needs, and
    is not transient: trying again cannot help until someone grants them.
    """
    transient = is_transient(exc)
    if isinstance(exc, gexc.Forbidden) and not transient:
        return PredictionExportError(
            f"{what} was refused: this service account needs {permissions} on {resource} "
            f"(terraform/iam.tf grants it). BigQuery said: {exc}",
            transient=False,
        )
    return PredictionExportError(
        f"{what} failed: {exc}. {check}; the next export sends these rows again.",
        transient=transient,
    )


@dataclass
class BigQueryPredictionTable:
    """The export's target: ``table`` (``project.dataset.table``), through ``client``.

    ``timeout_seconds`` bounds each job (load, MERGE).
    """

    client: bigquery.Client
    table: str
    timeout_seconds: float

    @property
    def reference(self) -> bigquery.TableReference:
        return bigquery.TableReference.from_string(self.table)

    def export(self, engine: Engine, window: ExportWindow) -> ExportedRows:
        """Move ``window``'s changes into the table; what moved. Nothing to move: no job.

        Raises ``PredictionExportError`` (``transient`` when another try may succeed).
        """
        with tempfile.TemporaryFile() as spool:
            exported = self._spool(engine, window, spool)
            if exported.records is None:
                return exported
            staging = staging_table(self.reference)
            self._load(spool, staging, exported)
            try:
                self._merge(staging, exported)
            except PredictionExportError as failed:
                # The merge's error is the one to raise; a drop that fails too is noted on it.
                try:
                    self.client.delete_table(staging, not_found_ok=True)
                except gexc.GoogleAPIError as exc:
                    failed.add_note(
                        f"deleting staging table {staging} failed too ({exc}); it expires "
                        "within a day"
                    )
                raise
            self._drop(staging, exported)
        return exported

    def _spool(self, engine: Engine, window: ExportWindow, spool: IO[bytes]) -> ExportedRows:
        exported = ExportedRows()
        pages: Iterable[list[PredictionReceipt] | list[PredictionTombstone]]
        for pages in (iter_changed(engine, window), iter_deleted(engine, window)):
            for page in pages:
                for row in page:
                    spool.write(json.dumps(staged_row(row)).encode("utf-8") + b"\n")
                exported = exported.with_rows(page)
        return exported

    def _load(
        self, spool: IO[bytes], staging: bigquery.TableReference, exported: ExportedRows
    ) -> None:
        size = spool.tell()
        try:
            load_spool(
                self.client,
                spool,
                staging,
                schema=STAGING_SCHEMA,
                disposition=bigquery.WriteDisposition.WRITE_EMPTY,
                timeout_seconds=self.timeout_seconds,
            )
        except gexc.GoogleAPIError as exc:
            raise export_error(
                f"loading {exported.describe()} ({size} bytes) into staging table {staging}",
                exc,
                resource=f"dataset {staging.project}.{staging.dataset_id}",
                permissions="bigquery.tables.create and bigquery.tables.updateData",
                check=f"Check that the dataset {staging.dataset_id} exists (Terraform creates it)",
            ) from exc

    def _merge(self, staging: bigquery.TableReference, exported: ExportedRows) -> None:
        try:
            self.client.query_and_wait(
                merge_statement(self.table, str(staging)), wait_timeout=self.timeout_seconds
            )
        except gexc.GoogleAPIError as exc:
            raise export_error(
                f"merging {exported.describe()} into BigQuery table {self.table}",
                exc,
                resource=f"table {self.table}",
                permissions="bigquery.tables.getData and bigquery.tables.updateData",
                check="Check that the table exists with the columns of PREDICTIONS_SCHEMA "
                "(Terraform creates it)",
            ) from exc

    def _drop(self, staging: bigquery.TableReference, exported: ExportedRows) -> None:
        try:
            self.client.delete_table(staging, not_found_ok=True)
        except gexc.GoogleAPIError as exc:
            raise export_error(
                f"deleting staging table {staging} of {exported.describe()}",
                exc,
                resource=f"dataset {staging.project}.{staging.dataset_id}",
                permissions="bigquery.tables.delete",
                check="The table expires within a day by itself",
            ) from exc
