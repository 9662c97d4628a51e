"""Local fakes of the Google services that have no local form, speaking their real wire APIs.

``FakeVertex`` is a gRPC server with the real ``google.cloud.aiplatform.v1`` method names and
proto messages (the generated clients cannot tell it from Vertex AI); ``FakeBigQuery`` answers
the REST calls google-cloud-bigquery makes for a multipart load job, ``jobs.query`` (the feature
import's and the prediction export's statements), ``tables.get`` and ``tables.delete``;
``FakeCloudRun`` serves the Cloud Run Admin v2 calls of Dagster's Cloud Run run launcher. Each
keeps just enough state to behave like the service for our calls: a sync copies the BigQuery
table into the online store, as Vertex does.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import grpc
from google.cloud import run_v2
from google.cloud.aiplatform_v1 import (
    FeatureOnlineStore,
    FeatureView,
    FeatureViewSync,
    FetchFeatureValuesRequest,
    FetchFeatureValuesResponse,
    GetFeatureOnlineStoreRequest,
    GetFeatureViewRequest,
    GetFeatureViewSyncRequest,
    PredictRequest,
    PredictResponse,
    SyncFeatureViewRequest,
    SyncFeatureViewResponse,
)
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, json_format

PACKAGE = "google.cloud.aiplatform.v1"


def _unary(handler: Callable, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=request_type.deserialize,
        response_serializer=response_type.serialize,
    )


@dataclass
class FakeVertex:
    """Vertex AI online store, its admin service and a prediction endpoint on one gRPC port.

    ``source`` gives the rows a sync copies (the fake BigQuery table). ``sync_outcome`` is
    ``"ok"``, ``"fail"`` or ``"never"``; ``fetch_errors`` maps a key to the status code its fetch
    aborts with; ``predict_errors`` is consumed one code per Predict call before answers come.
    """

    source: Callable[[], list[dict[str, Any]]] = list
    online: dict[str, str] = field(default_factory=dict)
    sync_outcome: str = "ok"
    sync_polls_before_done: int = 2
    syncs: dict[str, int] = field(default_factory=dict)
    fetch_errors: dict[str, grpc.StatusCode] = field(default_factory=dict)
    fetch_keys: list[str] = field(default_factory=list)
    predict_errors: list[grpc.StatusCode] = field(default_factory=list)
    predict_sizes: list[int] = field(default_factory=list)
    public_endpoint: str = ""
    feature_view_exists: bool = True
    feature_view_lookups: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.feature_view_exists = True
            self.feature_view_lookups = 0
            self.online.clear()
            self.syncs.clear()
            self.fetch_errors.clear()
            self.fetch_keys.clear()
            self.predict_errors.clear()
            self.predict_sizes.clear()
            self.sync_outcome = "ok"
            self.sync_polls_before_done = 2
            self.public_endpoint = ""

    def fetch_feature_values(
        self, request: FetchFeatureValuesRequest, context: grpc.ServicerContext
    ) -> FetchFeatureValuesResponse:
        key = request.data_key.key
        with self.lock:
            self.fetch_keys.append(key)
            error = self.fetch_errors.get(key)
            text = self.online.get(key)
        if error is not None:
            context.abort(error, f"injected {error.name} for key {key}")
        if text is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"entity {key} not found")
        return FetchFeatureValuesResponse(
            key_values={
                "features": [
                    {"name": "text", "value": {"string_value": text}},
                ]
            },
            data_key=request.data_key,
        )

    def sync_feature_view(
        self, request: SyncFeatureViewRequest, context: grpc.ServicerContext
    ) -> SyncFeatureViewResponse:
        name = f"{request.feature_view}/featureViewSyncs/{uuid.uuid4().int % 10**12}"
        with self.lock:
            self.syncs[name] = 0
        return SyncFeatureViewResponse(feature_view_sync=name)

    def get_feature_view_sync(
        self, request: GetFeatureViewSyncRequest, context: grpc.ServicerContext
    ) -> FeatureViewSync:
        with self.lock:
            if request.name not in self.syncs:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no sync {request.name}")
            self.syncs[request.name] += 1
            polls = self.syncs[request.name]
            outcome = self.sync_outcome
        sync = FeatureViewSync(name=request.name, create_time={"seconds": 1_700_000_000})
        if outcome == "never" or polls < self.sync_polls_before_done:
            return sync
        sync.run_time = {
            "start_time": {"seconds": 1_700_000_000},
            "end_time": {"seconds": 1_700_000_060},
        }
        if outcome == "fail":
            sync.final_status = {"code": 9, "message": "BigQuery source has no entity_id column"}
            return sync
        rows = self.source()
        with self.lock:
            self.online = {row["entity_id"]: row["text"] for row in rows}
        sync.final_status = {"code": 0}
        sync.sync_summary = {"row_synced": len(rows)}
        return sync

    def get_feature_view(
        self, request: GetFeatureViewRequest, context: grpc.ServicerContext
    ) -> FeatureView:
        with self.lock:
            self.feature_view_lookups += 1
            exists = self.feature_view_exists
        if not exists:
            context.abort(grpc.StatusCode.NOT_FOUND, f"FeatureView {request.name} not found")
        return FeatureView(name=request.name)

    def get_feature_online_store(
        self, request: GetFeatureOnlineStoreRequest, context: grpc.ServicerContext
    ) -> FeatureOnlineStore:
        return FeatureOnlineStore(
            name=request.name,
            optimized={},
            dedicated_serving_endpoint={"public_endpoint_domain_name": self.public_endpoint},
        )

    def predict(self, request: PredictRequest, context: grpc.ServicerContext) -> PredictResponse:
        with self.lock:
            self.predict_sizes.append(PredictRequest.pb(request).ByteSize())
            error = self.predict_errors.pop(0) if self.predict_errors else None
        if error is not None:
            context.abort(error, f"injected {error.name}")
        body = json_format.MessageToDict(PredictRequest.pb(request))
        labels = body["parameters"]["candidate_labels"]
        scores = [1.0 / len(labels)] * len(labels)
        predictions = [
            {"sequence": text, "labels": labels, "scores": scores} for text in body["instances"]
        ]
        response = PredictResponse.pb()(deployed_model_id="1")
        json_format.ParseDict({"predictions": predictions}, response)
        return PredictResponse.wrap(response)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        services = {
            "FeatureOnlineStoreService": {
                "FetchFeatureValues": _unary(
                    self.fetch_feature_values, FetchFeatureValuesRequest, FetchFeatureValuesResponse
                ),
            },
            "FeatureOnlineStoreAdminService": {
                "SyncFeatureView": _unary(
                    self.sync_feature_view, SyncFeatureViewRequest, SyncFeatureViewResponse
                ),
                "GetFeatureViewSync": _unary(
                    self.get_feature_view_sync, GetFeatureViewSyncRequest, FeatureViewSync
                ),
                "GetFeatureView": _unary(self.get_feature_view, GetFeatureViewRequest, FeatureView),
                "GetFeatureOnlineStore": _unary(
                    self.get_feature_online_store, GetFeatureOnlineStoreRequest, FeatureOnlineStore
                ),
            },
            "PredictionService": {
                "Predict": _unary(self.predict, PredictRequest, PredictResponse),
            },
        }
        return [
            grpc.method_handlers_generic_handler(f"{PACKAGE}.{service}", methods)
            for service, methods in services.items()
        ]


@contextmanager
def vertex_server(fake: FakeVertex) -> Iterator[str]:
    """Serve ``fake`` on a free loopback port; yields ``127.0.0.1:PORT``."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=32),
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    server.add_generic_rpc_handlers(fake.handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@dataclass
class FakeBigQuery:
    """BigQuery tables by ``project.dataset.table``; rows are dicts of JSON values.

    Load write dispositions as BigQuery applies them: WRITE_APPEND adds rows, WRITE_EMPTY adds
    rows to an empty or new table and fails on one with rows, WRITE_TRUNCATE replaces the rows
    and the table's schema with the load's, WRITE_TRUNCATE_DATA replaces the rows and keeps the
    existing table's schema (descriptions included).
    """

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    schemas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_dispositions: list[str] = field(default_factory=list)
    # Every query's text, and every table deleted, in order.
    queries: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Answer table deletions 403, as BigQuery does an account without bigquery.tables.delete.
    refuse_deletes: bool = False
    # Answer DML DELETE statements 403, as BigQuery does without bigquery.tables.updateData.
    refuse_row_deletes: bool = False
    # Answer the prediction export's MERGE 403 (no bigquery.tables.updateData on the target).
    refuse_prediction_merges: bool = False
    # Fail this many of the next load jobs as BigQuery fails a job on its side (errorResult
    # reason backendError, which the client reports as a 500 and does not run again).
    failing_loads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.tables.clear()
            self.schemas.clear()
            self.jobs.clear()
            self.load_dispositions.clear()
            self.queries.clear()
            self.deleted.clear()
            self.refuse_deletes = False
            self.refuse_row_deletes = False
            self.refuse_prediction_merges = False
            self.failing_loads = 0

    def create_table(self, table: str, fields: list[dict[str, Any]]) -> None:
        """An empty table with ``fields`` (BigQuery schema fields), as Terraform creates it."""
        with self.lock:
            self.tables[table] = []
            self.schemas[table] = fields

    def schema(self, table: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.schemas.get(table, []))

    def rows(self, table: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.tables.get(table, []))

    def load(self, project: str, job: dict[str, Any], data: bytes) -> dict[str, Any]:
        load = job["configuration"]["load"]
        ref = load["destinationTable"]
        table = f"{ref['projectId']}.{ref['datasetId']}.{ref['tableId']}"
        names = [f["name"] for f in load["schema"]["fields"]]
        rows = [json.loads(line) for line in data.splitlines() if line.strip()]
        bad = [row for row in rows if set(row) != set(names)]
        job_id = job["jobReference"]["jobId"]
        done = {
            **job,
            "jobReference": {"projectId": project, "jobId": job_id, "location": "US"},
            "status": {"state": "DONE"},
            "statistics": {"load": {"outputRows": str(len(rows))}},
        }
        disposition = load.get("writeDisposition", "WRITE_APPEND")
        with self.lock:
            not_empty = disposition == "WRITE_EMPTY" and bool(self.tables.get(table))
            backend_error = self.failing_loads > 0
            self.failing_loads -= backend_error
        if backend_error:
            error = {"reason": "backendError", "message": "Backend error. Job aborted."}
            done["status"] = {"state": "DONE", "errorResult": error, "errors": [error]}
        elif bad or not_empty:
            message = (
                f"row {bad[0]} does not match {names}" if bad else f"table {table} is not empty"
            )
            error = {"reason": "invalid", "message": message}
            done["status"] = {"state": "DONE", "errorResult": error, "errors": [error]}
        else:
            with self.lock:
                self.load_dispositions.append(disposition)
                if disposition == "WRITE_TRUNCATE" or table not in self.schemas:
                    self.schemas[table] = load["schema"]["fields"]
                if disposition in {"WRITE_TRUNCATE", "WRITE_TRUNCATE_DATA"}:
                    self.tables[table] = rows
                else:
                    self.tables.setdefault(table, []).extend(rows)
        with self.lock:
            self.jobs[job_id] = done
        return done

    def latest(self, table: str) -> list[dict[str, Any]]:
        """One row per entity id, the latest by ``feature_timestamp`` (Vertex's serving rule)."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.rows(table):
            kept = latest.get(row["entity_id"])
            if kept is None or _instant(row["feature_timestamp"]) >= _instant(
                kept["feature_timestamp"]
            ):
                latest[row["entity_id"]] = row
        return list(latest.values())

    def delete(self, project: str, dataset: str, table: str) -> bool:
        """Drop a table; False if there was none (BigQuery answers 404)."""
        key = f"{project}.{dataset}.{table}"
        with self.lock:
            self.schemas.pop(key, None)
            self.deleted.append(key)
            return self.tables.pop(key, None) is not None

    def merge(self, target: str, source: str) -> int:
        """The store's MERGE: the newest staged row per entity id, unless the target's is newer.

        Returns the rows inserted or updated (BigQuery's numDmlAffectedRows).
        """
        staged = self.latest(source)
        with self.lock:
            rows = self.tables.setdefault(target, [])
            by_id = {row["entity_id"]: index for index, row in enumerate(rows)}
            affected = 0
            for row in staged:
                index = by_id.get(row["entity_id"])
                if index is None:
                    rows.append(dict(row))
                    affected += 1
                elif _instant(row["feature_timestamp"]) >= _instant(
                    rows[index]["feature_timestamp"]
                ):
                    rows[index] = dict(row)
                    affected += 1
            return affected

    def merge_predictions(self, target: str, source: str, key: list[str]) -> int:
        """The prediction export's MERGE: per key, the staged row with the highest
        ``change_seq`` is applied unless the stored row's is higher; a staged row with
        ``deleted`` removes the stored one, another replaces or adds it (without ``deleted``).

        Returns the rows inserted, updated or deleted (BigQuery's numDmlAffectedRows).
        """
        with self.lock:
            staged: dict[tuple[Any, ...], dict[str, Any]] = {}
            for row in self.tables[source]:
                at = tuple(row[name] for name in key)
                if at not in staged or int(row["change_seq"]) > int(staged[at]["change_seq"]):
                    staged[at] = row
            rows = self.tables[target]
            by_key = {tuple(row[name] for name in key): row for row in rows}
            affected = 0
            for at, row in staged.items():
                stored = by_key.get(at)
                if stored is not None and int(row["change_seq"]) < int(stored["change_seq"]):
                    continue
                if row["deleted"]:
                    if stored is not None:
                        del by_key[at]
                        affected += 1
                    continue
                by_key[at] = {name: value for name, value in row.items() if name != "deleted"}
                affected += 1
            self.tables[target] = list(by_key.values())
            return affected

    def _prediction_merge(self, match: re.Match[str], reference: dict[str, str]) -> dict[str, Any]:
        """The export's MERGE, checked as BigQuery would: both tables exist, the UPDATE and the
        INSERT name exactly the target's columns (an unknown one is an error; one left out
        would keep a stale value or be NULL), the key is the ON clause's."""
        target, staging, partition, on, updates, inserted, values = match.groups()
        if self.refuse_prediction_merges:
            message = f"Access Denied: Table {target}: Permission bigquery.tables.updateData denied"
            return {"error": {"code": 403, "message": message}}
        with self.lock:
            missing = [t for t in (target, staging) if t not in self.tables]
            columns = [f["name"] for f in self.schemas.get(target, [])]
        if missing:
            return {"error": {"code": 404, "message": f"Not found: Table {missing[0]}"}}
        key = [name.strip() for name in partition.split(",")]
        on_key = re.findall(r"target\.(\w+) = source\.\1", on)
        updated = re.findall(r"(\w+) = source\.\1", updates)
        inserted_names = [name.strip() for name in inserted.split(",")]
        value_names = [name.strip().removeprefix("source.") for name in values.split(",")]
        problems = []
        if on_key != key:
            problems.append(f"ON compares {on_key}, the partition is {key}")
        if sorted(updated) != sorted(set(columns) - set(key)):
            problems.append(f"UPDATE SET {updated} is not the non-key columns of {columns}")
        if inserted_names != value_names or sorted(inserted_names) != sorted(columns):
            problems.append(f"INSERT ({inserted_names}) VALUES ({value_names}) is not {columns}")
        if problems:
            return {"error": {"code": 400, "message": "; ".join(problems)}}
        return {
            "kind": "bigquery#queryResponse",
            "jobReference": reference,
            "jobComplete": True,
            "numDmlAffectedRows": str(self.merge_predictions(target, staging, key)),
        }

    def delete_rows(self, table: str, entity_ids: list[str]) -> int:
        """The store's DML DELETE: rows whose entity id is in ``entity_ids``; how many went."""
        with self.lock:
            rows = self.tables[table]
            kept = [row for row in rows if row["entity_id"] not in set(entity_ids)]
            self.tables[table] = kept
            return len(rows) - len(kept)

    def _delete_statement(
        self, table: str, body: dict[str, Any], reference: dict[str, str]
    ) -> dict[str, Any]:
        """``DELETE FROM `t` WHERE entity_id IN UNNEST(@ids)`` with ``ids`` an ARRAY<STRING>
        query parameter, checked as BigQuery checks it (an INT64 array against the STRING
        column has no matching signature)."""
        if self.refuse_row_deletes:
            message = f"Access Denied: Table {table}: Permission bigquery.tables.updateData denied"
            return {"error": {"code": 403, "message": message}}
        with self.lock:
            if table not in self.tables:
                return {"error": {"code": 404, "message": f"Not found: Table {table}"}}
        [parameter] = body["queryParameters"]
        kind = parameter["parameterType"]
        if parameter["name"] != "ids" or kind != {"type": "ARRAY", "arrayType": {"type": "STRING"}}:
            message = f"No matching signature for operator IN UNNEST for {kind}"
            return {"error": {"code": 400, "message": message}}
        ids = [value["value"] for value in parameter["parameterValue"].get("arrayValues", [])]
        return {
            "kind": "bigquery#queryResponse",
            "jobReference": reference,
            "jobComplete": True,
            "numDmlAffectedRows": str(self.delete_rows(table, ids)),
        }

    def query(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answers the four queries the store sends and the prediction export's MERGE, and
        only those.

        ``SELECT entity_id, text FROM `t` WHERE TRUE QUALIFY <latest per entity_id> ORDER BY …
        LIMIT @limit``, ``SELECT COUNT(DISTINCT entity_id) AS records FROM `t``` and the import's
        ``MERGE INTO `t` AS target USING (SELECT … FROM `staging` WHERE TRUE QUALIFY <latest>)
        … WHEN MATCHED AND <newer> THEN UPDATE … WHEN NOT MATCHED THEN INSERT …`` and the
        import's ``DELETE FROM `t` WHERE entity_id IN UNNEST(@ids)``; ``PREDICTION_MERGE``.
        """
        self.queries.append(body["query"])
        reference = {"projectId": project, "jobId": uuid.uuid4().hex, "location": "US"}
        delete = re.fullmatch(
            r"DELETE FROM `([^`]+)` WHERE entity_id IN UNNEST\(@ids\)", body["query"]
        )
        if delete:
            return self._delete_statement(delete[1], body, reference)
        prediction_merge = PREDICTION_MERGE.fullmatch(body["query"])
        if prediction_merge:
            return self._prediction_merge(prediction_merge, reference)
        merge = re.fullmatch(
            r"MERGE INTO `([^`]+)` AS target USING \(SELECT entity_id, text, feature_timestamp "
            r"FROM `([^`]+)` WHERE TRUE QUALIFY ROW_NUMBER\(\) OVER \(PARTITION BY entity_id "
            r"ORDER BY feature_timestamp DESC\) = 1\) AS source "
            r"ON target.entity_id = source.entity_id "
            r"WHEN MATCHED AND source.feature_timestamp >= target.feature_timestamp THEN "
            r"UPDATE SET text = source.text, feature_timestamp = source.feature_timestamp "
            r"WHEN NOT MATCHED THEN INSERT \(entity_id, text, feature_timestamp\) "
            r"VALUES \(source.entity_id, source.text, source.feature_timestamp\)",
            body["query"],
        )
        if merge:
            with self.lock:
                missing = [t for t in merge.groups() if t not in self.tables]
            if missing:
                return {"error": {"code": 404, "message": f"Not found: Table {missing[0]}"}}
            affected = self.merge(*merge.groups())
            return {
                "kind": "bigquery#queryResponse",
                "jobReference": reference,
                "jobComplete": True,
                "numDmlAffectedRows": str(affected),
            }
        match = re.search(r"FROM `([^`]+)`", body["query"])
        if match is None:
            raise ValueError(f"the fake cannot run {body['query']!r}")
        if "COUNT(DISTINCT entity_id) AS records" in body["query"]:
            with self.lock:
                if match[1] not in self.tables:
                    return {"error": {"code": 404, "message": f"Not found: Table {match[1]}"}}
            count = len({row["entity_id"] for row in self.rows(match[1])})
            return {
                "kind": "bigquery#queryResponse",
                "jobReference": reference,
                "jobComplete": True,
                "totalRows": "1",
                "schema": {"fields": [{"name": "records", "type": "INTEGER", "mode": "NULLABLE"}]},
                "rows": [{"f": [{"v": str(count)}]}],
            }
        if (
            "LIMIT @limit" not in body["query"]
            or "WHERE TRUE QUALIFY ROW_NUMBER()" not in body["query"]
        ):
            raise ValueError(f"the fake cannot run {body['query']!r}")
        params = {p["name"]: p["parameterValue"]["value"] for p in body["queryParameters"]}
        rows = sorted(self.latest(match[1]), key=lambda row: int(row["entity_id"]))
        rows = rows[: int(params["limit"])]
        return {
            "kind": "bigquery#queryResponse",
            "jobReference": reference,
            "jobComplete": True,
            "totalRows": str(len(rows)),
            "schema": {
                "fields": [
                    {"name": "entity_id", "type": "STRING", "mode": "NULLABLE"},
                    {"name": "text", "type": "STRING", "mode": "NULLABLE"},
                ]
            },
            "rows": [{"f": [{"v": row["entity_id"]}, {"v": row["text"]}]} for row in rows],
        }

    def table(self, project: str, dataset: str, table: str) -> dict[str, Any] | None:
        key = f"{project}.{dataset}.{table}"
        with self.lock:
            if key not in self.tables:
                return None
            count = len(self.tables[key])
            fields = list(self.schemas.get(key, []))
        return {
            "kind": "bigquery#table",
            "id": f"{project}:{dataset}.{table}",
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "numRows": str(count),
            "schema": {"fields": fields},
        }


def _instant(timestamp: str) -> datetime:
    """A BigQuery TIMESTAMP as the load gives it (ISO 8601 with offset) as an aware time."""
    return datetime.fromisoformat(timestamp)


# The prediction export's MERGE (clients/bigquery_predictions.merge_statement); the groups:
# target, staging, partition key, ON clause, UPDATE SET list, INSERT columns, VALUES.
PREDICTION_MERGE = re.compile(
    r"MERGE INTO `([^`]+)` AS target USING \(SELECT \* FROM `([^`]+)` WHERE TRUE "
    r"QUALIFY ROW_NUMBER\(\) OVER \(PARTITION BY ([\w, ]+) ORDER BY change_seq DESC\) = 1\) "
    r"AS source "
    r"ON ((?:target\.\w+ = source\.\w+(?: AND )?)+) "
    r"WHEN MATCHED AND source\.deleted AND source\.change_seq >= target\.change_seq "
    r"THEN DELETE "
    r"WHEN MATCHED AND NOT source\.deleted AND source\.change_seq >= target\.change_seq "
    r"THEN UPDATE SET ((?:\w+ = source\.\w+(?:, )?)+) "
    r"WHEN NOT MATCHED AND NOT source\.deleted THEN INSERT \(([\w, ]+)\) "
    r"VALUES \(([\w., ]+)\)"
)
UPLOAD_PATH = re.compile(r"^/upload/bigquery/v2/projects/([^/]+)/jobs$")
JOB_PATH = re.compile(r"^/bigquery/v2/projects/([^/]+)/jobs/([^/]+)$")
QUERY_PATH = re.compile(r"^/bigquery/v2/projects/([^/]+)/queries$")
TABLE_PATH = re.compile(r"^/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)$")


class BigQueryHandler(BaseHTTPRequestHandler):
    """The REST routes of BigQuery that our client calls; ``fake`` is set per server."""

    fake: FakeBigQuery

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not every request."""

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._send(404, {"error": {"code": 404, "message": f"Not found: {self.path}"}})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = urlparse(self.path).path
        if match := UPLOAD_PATH.match(path):
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + self._body()
            )
            metadata, media = (part.get_payload(decode=True) for part in message.iter_parts())
            self._send(200, self.fake.load(match[1], json.loads(metadata), media))
        elif match := QUERY_PATH.match(path):
            answer = self.fake.query(match[1], json.loads(self._body()))
            self._send(answer["error"]["code"] if "error" in answer else 200, answer)
        else:
            self._not_found()

    def do_DELETE(self) -> None:  # noqa: N802 - http.server's naming
        path = urlparse(self.path).path
        if self.fake.refuse_deletes:
            message = "Access Denied: Permission bigquery.tables.delete denied"
            self._send(403, {"error": {"code": 403, "message": message}})
        elif (match := TABLE_PATH.match(path)) and self.fake.delete(*match.groups()):
            self.send_response(204)
            self.end_headers()
        else:
            self._not_found()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlparse(self.path).path
        if (match := JOB_PATH.match(path)) and match[2] in self.fake.jobs:
            self._send(200, self.fake.jobs[match[2]])
        elif (match := TABLE_PATH.match(path)) and (found := self.fake.table(*match.groups())):
            self._send(200, found)
        else:
            self._not_found()


@contextmanager
def bigquery_server(fake: FakeBigQuery) -> Iterator[str]:
    """Serve ``fake`` over HTTP on a free loopback port; yields ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Handler", (BigQueryHandler,), {"fake": fake})
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class FakeTokenEndpoint:
    """Google's OAuth2 token endpoint for service accounts (JWT-bearer grant): an ID token when
    the assertion names a ``target_audience``, an access token otherwise (as the real one)."""

    issued: list[str] = field(default_factory=list)
    access_tokens: list[str] = field(default_factory=list)
    lifetime_seconds: int = 3600

    def answer(self, assertion: str) -> dict[str, Any]:
        """The token endpoint's JSON answer to a JWT-bearer grant of ``assertion``."""
        import base64

        claims = json.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))
        if "target_audience" in claims:
            return {"id_token": self.id_token(assertion)}
        token = f"ya29.fake-{uuid.uuid4().hex}"
        self.access_tokens.append(token)
        return {"access_token": token, "expires_in": self.lifetime_seconds, "token_type": "Bearer"}

    def id_token(self, assertion: str) -> str:
        import base64
        import time

        def b64(data: dict[str, Any]) -> str:
            raw = json.dumps(data).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        claims = json.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))
        now = int(time.time())
        token = ".".join(
            [
                b64({"alg": "RS256", "typ": "JWT"}),
                b64(
                    {
                        "aud": claims["target_audience"],
                        "iss": "https://accounts.google.com",
                        "sub": claims["iss"],
                        "iat": now,
                        "exp": now + self.lifetime_seconds,
                    }
                ),
                "c2lnbmF0dXJl",
            ]
        )
        self.issued.append(token)
        return token


@contextmanager
def token_server(fake: FakeTokenEndpoint) -> Iterator[str]:
    """Serve ``fake`` on a free loopback port; yields its token URI."""
    from urllib.parse import parse_qs

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            body = json.dumps(fake.answer(form["assertion"][0])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class FakeCloudRun:
    """Cloud Run Admin API v2, the calls CloudRunRunLauncher makes: Jobs.RunJob,
    Executions.GetExecution and Executions.CancelExecution, on one gRPC port.

    ``runs`` keeps each RunJob request; ``states`` maps an execution name to "running",
    "succeeded", "failed" or "cancelled" (as its counters and ``reconciling`` report it);
    ``refuse`` makes RunJob abort with that status code.
    """

    runs: list[run_v2.RunJobRequest] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    refuse: grpc.StatusCode | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_job(
        self, request: run_v2.RunJobRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        if self.refuse is not None:
            context.abort(self.refuse, f"injected {self.refuse.name} for {request.name}")
        job = request.name.rsplit("/", 1)[-1]
        execution = run_v2.Execution(
            name=f"{request.name}/executions/{job}-{uuid.uuid4().hex[:5]}", job=job
        )
        with self.lock:
            self.runs.append(request)
            self.states[execution.name] = "running"
        metadata = any_pb2.Any()
        metadata.Pack(run_v2.Execution.pb(execution))
        return operations_pb2.Operation(name=f"{execution.name}/operation", metadata=metadata)

    def get_execution(
        self, request: run_v2.GetExecutionRequest, context: grpc.ServicerContext
    ) -> run_v2.Execution:
        with self.lock:
            state = self.states.get(request.name)
        if state is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"execution {request.name} not found")
        return run_v2.Execution(
            name=request.name,
            reconciling=state == "running",
            succeeded_count=int(state == "succeeded"),
            failed_count=int(state == "failed"),
            cancelled_count=int(state == "cancelled"),
        )

    def cancel_execution(
        self, request: run_v2.CancelExecutionRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        with self.lock:
            self.states[request.name] = "cancelled"
        return operations_pb2.Operation(name=f"{request.name}/cancel", done=True)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def operation(handler: Callable, request_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                handler,
                request_deserializer=request_type.deserialize,
                response_serializer=operations_pb2.Operation.SerializeToString,
            )

        return [
            grpc.method_handlers_generic_handler(
                "google.cloud.run.v2.Jobs",
                {"RunJob": operation(self.run_job, run_v2.RunJobRequest)},
            ),
            grpc.method_handlers_generic_handler(
                "google.cloud.run.v2.Executions",
                {
                    "GetExecution": _unary(
                        self.get_execution, run_v2.GetExecutionRequest, run_v2.Execution
                    ),
                    "CancelExecution": operation(
                        self.cancel_execution, run_v2.CancelExecutionRequest
                    ),
                },
            ),
        ]


@contextmanager
def cloud_run_server(fake: FakeCloudRun) -> Iterator[str]:
    """Serve ``fake`` on a free loopback port; yields ``127.0.0.1:PORT``."""
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(fake.handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
