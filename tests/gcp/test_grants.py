"""Each workload's Google API calls, from its code paths, against what Terraform grants it.

The table ``CALLS`` says, per workload (the service account it runs as), which code path calls
which Google API, the IAM permission that call needs and the resource it is checked on. Every
row names the function that makes the call and a piece of its source, and the test reads that
source, so a row cannot outlive its call. The grants are read from terraform/ (every
``*_iam_member``, its ``for_each`` expanded), and roles are turned into permissions with
``ROLE_PERMISSIONS`` (copied from Google's "IAM basic and predefined roles reference", only the
permissions these calls need) or a custom role's own list.

Both ways: a call without a grant fails (the daemon's sensor looked up waiting requests in the
feature store without the feature-store role, and every tick failed), and so does a grant that
no call of that workload uses (the CLI held the dead-letter subscription it never reads).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
PROJECT = "project"
WORKLOADS = ("webserver", "daemon", "run_worker", "cli", "model_server", "build")


@dataclass(frozen=True)
class Call:
    """One Google API call of a workload.

    where: "module:qualified.name" of the function that makes it, or "terraform/<file>" for a
        call Cloud Run makes as the workload's account (secrets, volumes), or "cloud run" for
        the platform writing the container's output to Cloud Logging.
    uses: text that must appear in that source (the client call).
    permission: what IAM checks.
    resource: "project", or the Terraform address of the resource it is checked on.
    """

    where: str
    uses: str
    permission: str
    resource: str


REQUESTS_SUBSCRIPTION = "google_pubsub_subscription.requests"
DEAD_LETTER_SUBSCRIPTION = "google_pubsub_subscription.dead_letter"
REQUESTS_TOPIC = "google_pubsub_topic.requests"
RECORDS_TABLE = "google_bigquery_table.records"
STAGING_DATASET = 'google_bigquery_dataset.staging["features"]'
RUN_WORKER_JOB = "google_cloud_run_v2_job.run_worker"
LOGS_BUCKET = "google_storage_bucket.dagster_logs"
VERTEX = "batchinfer_dagster.clients.vertex_feature_store"
PUBSUB = "batchinfer_dagster.clients.pubsub_queue:PubSubQueue"
LAUNCHER = "dagster_contrib_gcp.cloud_run.run_launcher:CloudRunRunLauncher"
SECRETS = ("db_password", "database_url", "cloudsql_ca")

# FeatureStore.fetch on Vertex AI: the view and store looked up once, then one fetch per id.
FETCH = (
    Call(f"{VERTEX}:VertexFeatureStore.check_feature_view", "get_feature_view(",
         "aiplatform.featureViews.get", PROJECT),
    Call(f"{VERTEX}:serving_endpoint", "get_feature_online_store(",
         "aiplatform.featureOnlineStores.get", PROJECT),
    Call(f"{VERTEX}:VertexFeatureStore._fetch_one", "fetch_feature_values(",
         "aiplatform.featureViews.fetchFeatureValues", PROJECT),
)  # fmt: skip
# FeatureStore.import_records on Vertex AI: a load job into the import's own staging table (a
# full import: into the source table), the MERGE into the source table, the staging table
# dropped, the deleted records' rows deleted, the sync and its wait.
IMPORT = (
    Call(f"{VERTEX}:VertexFeatureStore._load_file", "load_spool(",
         "bigquery.jobs.create", PROJECT),
    Call(f"{VERTEX}:VertexFeatureStore._load_file", "load_spool(",
         "bigquery.tables.create", STAGING_DATASET),
    Call(f"{VERTEX}:VertexFeatureStore._load_file", "load_spool(",
         "bigquery.tables.updateData", STAGING_DATASET),
    Call(f"{VERTEX}:VertexFeatureStore._load", "WRITE_TRUNCATE_DATA",
         "bigquery.tables.updateData", RECORDS_TABLE),
    Call(f"{VERTEX}:VertexFeatureStore._merge", "merge_statement(", "bigquery.jobs.create",
         PROJECT),
    Call(f"{VERTEX}:VertexFeatureStore._merge", "merge_statement(", "bigquery.tables.getData",
         STAGING_DATASET),
    Call(f"{VERTEX}:VertexFeatureStore._merge", "merge_statement(", "bigquery.tables.getData",
         RECORDS_TABLE),
    Call(f"{VERTEX}:VertexFeatureStore._merge", "merge_statement(", "bigquery.tables.updateData",
         RECORDS_TABLE),
    Call(f"{VERTEX}:VertexFeatureStore._drop", "delete_table(", "bigquery.tables.delete",
         STAGING_DATASET),
    # The window's deleted records: a DML DELETE on the source table (reads it, writes it).
    Call(f"{VERTEX}:VertexFeatureStore._delete_rows", "deletion_statement(",
         "bigquery.jobs.create", PROJECT),
    Call(f"{VERTEX}:VertexFeatureStore._delete_rows", "deletion_statement(",
         "bigquery.tables.getData", RECORDS_TABLE),
    Call(f"{VERTEX}:VertexFeatureStore._delete_rows", "deletion_statement(",
         "bigquery.tables.updateData", RECORDS_TABLE),
    Call(f"{VERTEX}:VertexFeatureStore._sync_and_wait", "sync_feature_view(",
         "aiplatform.featureViews.sync", PROJECT),
    Call(f"{VERTEX}:VertexFeatureStore._sync_and_wait", "get_feature_view_sync(",
         "aiplatform.featureViewSyncs.get", PROJECT),
)  # fmt: skip
# The bigquery_predictions asset: a load job into the export's own staging table, the MERGE
# into the predictions table (reads and writes it; deletes the rows of erased records), the
# staging table dropped.
EXPORT_CLIENT = "batchinfer_dagster.clients.bigquery_predictions:BigQueryPredictionTable"
PREDICTIONS_TABLE = "google_bigquery_table.predictions"
PREDICTIONS_STAGING = 'google_bigquery_dataset.staging["predictions"]'
EXPORT = (
    Call("batchinfer_dagster.defs.prediction_export:bigquery_predictions", "target.export(",
         "bigquery.jobs.create", PROJECT),
    Call(f"{EXPORT_CLIENT}._load", "load_spool(", "bigquery.jobs.create", PROJECT),
    Call(f"{EXPORT_CLIENT}._load", "load_spool(", "bigquery.tables.create",
         PREDICTIONS_STAGING),
    Call(f"{EXPORT_CLIENT}._load", "load_spool(", "bigquery.tables.updateData",
         PREDICTIONS_STAGING),
    Call(f"{EXPORT_CLIENT}._merge", "merge_statement(", "bigquery.jobs.create", PROJECT),
    Call(f"{EXPORT_CLIENT}._merge", "merge_statement(", "bigquery.tables.getData",
         PREDICTIONS_STAGING),
    Call(f"{EXPORT_CLIENT}._merge", "merge_statement(", "bigquery.tables.getData",
         PREDICTIONS_TABLE),
    Call(f"{EXPORT_CLIENT}._merge", "merge_statement(", "bigquery.tables.updateData",
         PREDICTIONS_TABLE),
    Call(f"{EXPORT_CLIENT}._drop", "delete_table(", "bigquery.tables.delete",
         PREDICTIONS_STAGING),
)  # fmt: skip
# FeatureStore.list_records on Vertex AI (import-data's listing, status's count).
COUNT = (
    Call(f"{VERTEX}:VertexFeatureStore._count_records", "query_and_wait(",
         "bigquery.jobs.create", PROJECT),
    Call(f"{VERTEX}:VertexFeatureStore._count_records", "query_and_wait(",
         "bigquery.tables.getData", RECORDS_TABLE),
)  # fmt: skip


def dagster_storage(workload: str) -> tuple[Call, ...]:
    """Every Dagster container reads the database secrets Cloud Run injects (as its account)."""
    del workload
    return tuple(
        Call("terraform/dagster.tf", "secret_key_ref", "secretmanager.versions.access",
             f"google_secret_manager_secret.{secret}")
        for secret in SECRETS
    )  # fmt: skip


LOGS = Call("cloud run", "", "logging.logEntries.create", PROJECT)

CALLS: dict[str, tuple[Call, ...]] = {
    "webserver": (
        LOGS,
        *dagster_storage("webserver"),
        Call("dagster_gcp.gcs.compute_log_manager:GCSComputeLogManager", "download_to",
             "storage.objects.get", LOGS_BUCKET),
        # Terminating a run from the UI: the launcher's only Cloud Run call is CancelExecution
        # (no get, no run); Cloud Run checks run.executions.cancel for it since 2024-09-16
        # (before: run.jobs.run), per "Cloud Run IAM permissions".
        Call(f"{LAUNCHER}.terminate", "cancel_execution(", "run.executions.cancel",
             RUN_WORKER_JOB),
    ),
    "daemon": (
        LOGS,
        *dagster_storage("daemon"),
        # The sensor: intake, ack, and the lease of the messages it holds.
        Call("batchinfer_dagster.defs.sensors:pull_requests", "queue.pull(",
             "pubsub.subscriptions.consume", REQUESTS_SUBSCRIPTION),
        Call(f"{PUBSUB}._pull_once", "self.subscriber.pull(",
             "pubsub.subscriptions.consume", REQUESTS_SUBSCRIPTION),
        Call(f"{PUBSUB}.ack", "acknowledge(", "pubsub.subscriptions.consume",
             REQUESTS_SUBSCRIPTION),
        Call(f"{PUBSUB}._modify_ack_deadline", "modify_ack_deadline(",
             "pubsub.subscriptions.consume", REQUESTS_SUBSCRIPTION),
        # What Pub/Sub dead-lettered, read back into dead_letters.
        Call("batchinfer_dagster.defs.sensors:read_back_dead_letters", "pull_dead_letters(",
             "pubsub.subscriptions.consume", DEAD_LETTER_SUBSCRIPTION),
        # The requests waiting for features, looked up again.
        Call("batchinfer_dagster.defs.sensors:process_tick", "feature_store.fetch(",
             "aiplatform.featureViews.fetchFeatureValues", PROJECT),
        *FETCH,
        # Each run is an execution of the run-worker job, as the run-worker account; run
        # monitoring reads it.
        Call(f"{LAUNCHER}.execute_job", "run_job(", "run.jobs.runWithOverrides",
             RUN_WORKER_JOB),
        Call(f"{LAUNCHER}.execute_job", "run_job(", "iam.serviceAccounts.actAs",
             'google_service_account.workload["run_worker"]'),
        Call(f"{LAUNCHER}.check_run_worker_health", "get_execution(", "run.executions.get",
             RUN_WORKER_JOB),
        # Sensor and schedule tick logs go through the compute log manager.
        Call("dagster_gcp.gcs.compute_log_manager:GCSComputeLogManager", "upload_from",
             "storage.objects.create", LOGS_BUCKET),
    ),
    "run_worker": (
        LOGS,
        *dagster_storage("run_worker"),
        # predictions: the texts from the feature store, then the model server.
        Call("batchinfer_dagster.prediction:Predictor._predict", "feature_store.fetch(",
             "aiplatform.featureViews.fetchFeatureValues", PROJECT),
        *FETCH,
        Call("batchinfer_dagster.clients.model_client:HttpModelClient.send", "client.post(",
             "run.routes.invoke", "google_cloud_run_v2_service.model_server"),
        Call("batchinfer_dagster.clients.vertex_model_client:VertexModelClient._predict",
             "client.predict(", "aiplatform.endpoints.predict", PROJECT),
        # features: the import into BigQuery and the FeatureView sync.
        Call("batchinfer_dagster.defs.assets:features", "import_records(",
             "aiplatform.featureViews.sync", PROJECT),
        *IMPORT,
        *COUNT,
        # bigquery_predictions: the export into the predictions table.
        *EXPORT,
        Call("dagster_gcp.gcs.compute_log_manager:GCSComputeLogManager", "upload_from",
             "storage.objects.create", LOGS_BUCKET),
    ),
    "cli": (
        LOGS,
        *dagster_storage("cli"),
        Call("batchinfer_dagster.cli.requests:publish_payloads", "queue.publish(",
             "pubsub.topics.publish", REQUESTS_TOPIC),
        Call("batchinfer_dagster.cli.requests:dead_letters_replay", "queue.publish,",
             "pubsub.topics.publish", REQUESTS_TOPIC),
        Call(f"{PUBSUB}.publish", "self.publisher.publish(", "pubsub.topics.publish",
             REQUESTS_TOPIC),
        # import-data runs the features asset in the CLI's process, as the CLI's identity.
        Call("batchinfer_dagster.cli.records:import_data", "materialize_features(",
             "aiplatform.featureViews.sync", PROJECT),
        Call("batchinfer_dagster.defs.assets:features", "import_records(",
             "aiplatform.featureViews.sync", PROJECT),
        *IMPORT,
        Call("batchinfer_dagster.cli.status:status_counts", "list_records(",
             "bigquery.tables.getData", RECORDS_TABLE),
        *COUNT,
    ),
    "model_server": (
        LOGS,
        Call("terraform/model_server.tf", "gcs {", "storage.objects.get",
             "google_storage_bucket.models"),
    ),
    "build": (
        LOGS,
        Call("deploy/03-build-images.sh", "--gcs-source-staging-dir", "storage.objects.get",
             "google_storage_bucket.build_source"),
        Call("deploy/cloudbuild.yaml", "images:", "artifactregistry.repositories.uploadArtifacts",
             "google_artifact_registry_repository.images"),
    ),
}  # fmt: skip

# Predefined roles -> the permissions of theirs that CALLS needs (Google's "IAM basic and
# predefined roles reference"; each role holds more, which no call here uses).
ROLE_PERMISSIONS: dict[str, set[str]] = {
    "roles/logging.logWriter": {"logging.logEntries.create"},
    "roles/bigquery.jobUser": {"bigquery.jobs.create"},
    "roles/bigquery.dataEditor": {
        "bigquery.tables.create",
        "bigquery.tables.delete",
        "bigquery.tables.getData",
        "bigquery.tables.updateData",
    },
    "roles/bigquery.dataViewer": {"bigquery.tables.getData"},
    "roles/pubsub.subscriber": {"pubsub.subscriptions.consume"},
    "roles/pubsub.publisher": {"pubsub.topics.publish"},
    "roles/secretmanager.secretAccessor": {"secretmanager.versions.access"},
    "roles/storage.objectViewer": {"storage.objects.get"},
    "roles/storage.objectUser": {"storage.objects.get", "storage.objects.create"},
    "roles/run.jobsExecutorWithOverrides": {
        "run.jobs.runWithOverrides",
        "run.executions.get",
        "run.executions.cancel",
    },
    "roles/run.viewer": {"run.executions.get"},
    "roles/run.invoker": {"run.routes.invoke"},
    "roles/iam.serviceAccountUser": {"iam.serviceAccounts.actAs"},
    "roles/artifactregistry.writer": {"artifactregistry.repositories.uploadArtifacts"},
}


@dataclass(frozen=True)
class Grant:
    workload: str
    role: str
    resource: str


OPTIONS = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)


@cache
def documents() -> list[dict[str, Any]]:
    return [
        hcl2.load(path.open(), serialization_options=OPTIONS) for path in TERRAFORM.glob("*.tf")
    ]


def locals_() -> dict[str, Any]:
    return {
        k: v for doc in documents() for block in doc.get("locals", []) for k, v in block.items()
    }


def iam_members() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for doc in documents():
        for block in doc.get("resource", []):
            for kind, named in block.items():
                if kind.endswith("_iam_member"):
                    for name, body in named.items():
                        yield kind, name, body


def custom_roles() -> dict[str, set[str]]:
    """Custom role -> its permissions: the Feature Store roles by key, the others by name."""
    roles = {key: set(value) for key, value in locals_()["feature_store_roles"].items()}
    for doc in documents():
        for block in doc.get("resource", []):
            for name, body in block.get("google_project_iam_custom_role", {}).items():
                if isinstance(body.get("permissions"), list):
                    roles[f"custom:{name}"] = set(body["permissions"])
    return roles


TARGET = re.compile(r"\$\{(google_[a-z0-9_]+\.[a-z0-9_]+(?:\[\"[a-z_]+\"\])?)[.\[]")


def target_of(kind: str, body: dict[str, Any]) -> str:
    if kind == "google_project_iam_member":
        return PROJECT
    for field in ("subscription", "topic", "bucket", "table_id", "dataset_id", "repository",
                  "service_account_id", "name"):  # fmt: skip
        match = TARGET.match(str(body.get(field, "")))
        if match:
            return match[1]
    raise AssertionError(f"{kind}: no resource found in {body}")


def instances(body: dict[str, Any]) -> list[tuple[object, object]]:
    """(each.key, each.value) of every instance of a resource."""
    for_each = body.get("for_each")
    if for_each is None:
        return [(None, None)]
    if isinstance(for_each, dict):
        return list(for_each.items())
    if for_each == "${local.project_role_pairs}":
        return [
            (f"{workload} {role}", [workload, role])
            for workload, roles in locals_()["project_roles"].items()
            for role in roles
        ]
    if for_each.startswith("${toset(var."):
        return [(None, "a member from a variable")]  # the UI's users, not a workload
    listed = re.fullmatch(r"\$\{toset\(\[(.*)\]\)\}", for_each)
    if listed:
        keys = re.findall(r'"(\w+)"', listed[1])
        return [(key, key) for key in keys]
    if "setproduct(keys(local.dagster_secrets), tolist(local.dagster_roles))" in for_each:
        roles = re.findall(r'"(\w+)"', locals_()["dagster_roles"])
        return [(None, {"secret": secret, "member": role}) for secret in SECRETS for role in roles]
    raise AssertionError(f"test_grants cannot expand for_each = {for_each}")


def evaluate(expression: str, key: object, value: object) -> object:
    """The few expressions the IAM resources use for a member's workload or a role."""
    member = re.fullmatch(r"\$\{local\.members\.(\w+)\}", expression)
    if member:
        return member[1]
    inner = re.fullmatch(r"\$\{local\.members\[(.+)\]\}", expression)
    if inner:
        expression = "${" + inner[1] + "}"
    if expression == "${each.key}":
        return key
    if expression == "${each.value}":
        return value
    index = re.fullmatch(r"\$\{each\.value\[(\d)\]\}", expression)
    if index:
        return value[int(index[1])]  # type: ignore[index]
    attribute = re.fullmatch(r"\$\{each\.value\.(\w+)\}", expression)
    if attribute:
        return value[attribute[1]]  # type: ignore[index]
    custom = re.fullmatch(r"\$\{google_project_iam_custom_role\.(\w+)(\[0\])?\.id\}", expression)
    if custom:
        return f"custom:{custom[1]}"
    if "google_project_iam_custom_role.feature_store[each.value[1]]" in expression:
        return value[1]  # type: ignore[index]
    return expression


@cache
def grants() -> frozenset[Grant]:
    found = set()
    for kind, name, body in iam_members():
        for key, value in instances(body):
            workload = evaluate(body["member"], key, value)
            if workload not in WORKLOADS:
                continue  # Google's service agents and the UI's users
            role = str(evaluate(body["role"], key, value))
            role = str(evaluate(role, key, value))  # a for_each value that names a custom role
            if kind == "google_secret_manager_secret_iam_member":
                resource = f"google_secret_manager_secret.{value['secret']}"  # type: ignore[index]
            else:
                resource = target_of(kind, body)
            found.add(Grant(str(workload), role, resource))
            assert role.startswith(("roles/", "custom:", "feature_store_")), (kind, name, role)
    return frozenset(found)


def permissions(role: str) -> set[str]:
    custom = custom_roles()
    if role in custom:
        return custom[role]
    assert role in ROLE_PERMISSIONS, f"add {role}'s permissions to ROLE_PERMISSIONS"
    return ROLE_PERMISSIONS[role]


def covers(grant: Grant, call: Call) -> bool:
    on = grant.resource == call.resource or grant.resource == PROJECT
    return on and call.permission in permissions(grant.role)


def source_of(where: str) -> str:
    if ":" not in where:
        return (ROOT / where).read_text() if where != "cloud run" else ""
    module, qualname = where.split(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    if hasattr(target, "op"):  # an asset: the function it was made from
        target = target.op.compute_fn.decorated_fn
    if hasattr(target, "callback"):  # a click command: its function
        target = target.callback
    return inspect.getsource(target)


def all_calls() -> list[tuple[str, Call]]:
    return [(workload, call) for workload, calls in CALLS.items() for call in calls]


@pytest.mark.parametrize(
    ("workload", "call"), all_calls(), ids=lambda v: v if isinstance(v, str) else v.permission
)
def test_every_call_is_in_its_code_and_granted(workload: str, call: Call) -> None:
    assert call.uses in source_of(call.where), f"{call.where} no longer calls {call.uses!r}"
    assert any(covers(grant, call) for grant in grants() if grant.workload == workload), (
        f"{workload} calls {call.where} ({call.permission} on {call.resource}) without a grant"
    )


def test_every_grant_is_used_by_a_call_of_its_workload() -> None:
    unused = [
        grant
        for grant in grants()
        if not any(covers(grant, call) for call in CALLS[grant.workload])
    ]
    assert unused == []


def test_the_table_covers_every_workload_and_grants_were_found() -> None:
    assert set(CALLS) == set(WORKLOADS) == {g.workload for g in grants()}
    assert Grant("daemon", "feature_store_reader", PROJECT) in grants()
    assert Grant("daemon", "roles/pubsub.subscriber", DEAD_LETTER_SUBSCRIPTION) in grants()


def test_the_webserver_may_only_cancel_run_worker_executions() -> None:
    """Least privilege, not only "used": every permission the webserver holds on the run-worker
    job is one its code calls (a predefined role with cancel also runs the job)."""
    on_job = [grant for grant in grants() if grant.workload == "webserver"]
    held = {
        p for grant in on_job if grant.resource == RUN_WORKER_JOB for p in permissions(grant.role)
    }
    called = {call.permission for call in CALLS["webserver"] if call.resource == RUN_WORKER_JOB}
    assert held == called == {"run.executions.cancel"}
