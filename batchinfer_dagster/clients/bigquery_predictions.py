"""The BigQuery predictions table: one row per record and configuration, merged by export.

An export (``prediction_changes``: the rows written and deleted since the last export) spools
its receipts and tombstones as newline-delimited JSON on disk (memory stays bounded whatever the
window's size), loads them into a staging table of its own (a load job: no query bytes, no
streaming-insert buffer that DML cannot touch) and applies them with one ``MERGE`` keyed on
``(record_id, configuration)``: a new row is inserted, a changed one updated, a tombstone
deletes its row, and a staged row older than the stored one (by ``change_seq``, the database's
commit-order number) changes nothing, so a re-run, or an export retried after a later one,
never duplicates a row nor brings an old answer back. The staging table lives in the dataset
``<dataset>_staging`` beside the target's (Terraform creates it with a one-day table
expiration, as for the feature import) and is deleted after the merge.

Any failed job raises ``PredictionExportError`` naming the rows of the export (how many, which
records, which change numbers) and what to check; the caller keeps its watermark, so the next
export sends the same rows again.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery
from sqlalchemy import Engine

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
STAGING_DATASET_SUFFIX = "_staging"


class PredictionExportError(RuntimeError):
    """A BigQuery job of an export failed; the message names the export's rows."""


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

    ``WHERE TRUE``: BigQuery has refused a QUALIFY in a query without WHERE, GROUP BY or
    HAVING; the no-op filter is accepted with or without that rule.
    """
    key = " AND ".join(f"target.{name} = source.{name}" for name in KEY)
    newer = "source.change_seq >= target.change_seq"
    columns = ", ".join((*KEY, *UPDATED))
    return (
        f"MERGE `{target}` AS target USING (SELECT * FROM `{staging}` WHERE TRUE "
        "QUALIFY ROW_NUMBER() OVER "
        f"(PARTITION BY {', '.join(KEY)} ORDER BY change_seq DESC) = 1) AS source ON {key} "
        f"WHEN MATCHED AND source.deleted AND {newer} THEN DELETE "
        f"WHEN MATCHED AND NOT source.deleted AND {newer} THEN UPDATE SET "
        + ", ".join(f"{name} = source.{name}" for name in UPDATED)
        + f" WHEN NOT MATCHED AND NOT source.deleted THEN INSERT ({columns}) VALUES ("
        + ", ".join(f"source.{name}" for name in (*KEY, *UPDATED))
        + ")"
    )


@dataclass
class BigQueryPredictionTable:
    """The export's target: ``table`` (``project.dataset.table``), through ``client``.

    ``timeout_seconds`` bounds each job (load, MERGE). ``staging_name`` makes each export's
    staging table name (a uuid; tests may fix it).
    """

    client: bigquery.Client
    table: str
    timeout_seconds: float
    staging_name: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)

    @property
    def reference(self) -> bigquery.TableReference:
        return bigquery.TableReference.from_string(self.table)

    def staging_table(self) -> bigquery.TableReference:
        target = self.reference
        dataset = bigquery.DatasetReference(
            target.project, target.dataset_id + STAGING_DATASET_SUFFIX
        )
        return dataset.table(f"{target.table_id}_{self.staging_name()}")

    def export(self, engine: Engine, window: ExportWindow) -> ExportedRows:
        """Move ``window``'s changes into the table; what moved. Nothing to move: no job."""
        with tempfile.TemporaryFile() as spool:
            exported = self._spool(engine, window, spool)
            if exported.records is None:
                return exported
            staging = self.staging_table()
            self._load(spool, staging, exported)
            try:
                self._merge(staging, exported)
            except PredictionExportError as failed:
                # The merge's error is the one to raise; a drop that fails too is noted on it.
                try:
                    self.client.delete_table(staging, not_found_ok=True)
                except gexc.GoogleAPICallError as exc:
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
        spool.seek(0)
        config = bigquery.LoadJobConfig(
            schema=list(STAGING_SCHEMA),
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            write_disposition=bigquery.WriteDisposition.WRITE_EMPTY,
        )
        try:
            job = self.client.load_table_from_file(spool, staging, job_config=config, size=size)
            job.result(timeout=self.timeout_seconds)
        except gexc.GoogleAPICallError as exc:
            raise PredictionExportError(
                f"loading {exported.describe()} ({size} bytes) into staging table {staging} "
                f"failed: {exc}. Check that the dataset {staging.dataset_id} exists (Terraform "
                "creates it) and that this service account may create tables in it; the next "
                "export sends these rows again."
            ) from exc

    def _merge(self, staging: bigquery.TableReference, exported: ExportedRows) -> None:
        try:
            self.client.query_and_wait(
                merge_statement(self.table, str(staging)), wait_timeout=self.timeout_seconds
            )
        except gexc.GoogleAPICallError as exc:
            raise PredictionExportError(
                f"merging {exported.describe()} into BigQuery table {self.table} failed: {exc}. "
                "Check that the table exists with the columns of PREDICTIONS_SCHEMA (Terraform "
                "creates it) and that this service account may update its data; the next "
                "export sends these rows again."
            ) from exc

    def _drop(self, staging: bigquery.TableReference, exported: ExportedRows) -> None:
        try:
            self.client.delete_table(staging, not_found_ok=True)
        except gexc.GoogleAPICallError as exc:
            raise PredictionExportError(
                f"deleting staging table {staging} of {exported.describe()} failed: {exc}. "
                "Check that this service account may delete tables in its dataset (Terraform "
                "grants it); the table expires within a day by itself."
            ) from exc
