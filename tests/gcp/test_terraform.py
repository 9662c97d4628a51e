"""Static checks of terraform/: what `terraform validate` against the provider's schema
(tools/check-terraform) cannot see (the provider's own value limits, which names our variables
can produce), and the properties the design requires of the deployment."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from batchinfer_dagster.clients.bigquery_jobs import STAGING_DATASET_SUFFIX
from batchinfer_dagster.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
OPTIONS = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)
REQUIRED_ENV = {
    "BATCHINFER_QUEUE",
    "BATCHINFER_PUBSUB_PROJECT",
    "BATCHINFER_PUBSUB_TOPIC",
    "BATCHINFER_PUBSUB_SUBSCRIPTION",
    "BATCHINFER_FEATURE_STORE",
    "BATCHINFER_VERTEX_PROJECT",
    "BATCHINFER_VERTEX_REGION",
    "BATCHINFER_VERTEX_ONLINE_STORE",
    "BATCHINFER_VERTEX_FEATURE_VIEW",
    "BATCHINFER_VERTEX_BIGQUERY_TABLE",
    "BATCHINFER_MODEL_URL",
    "BATCHINFER_DATABASE_URL",
}
# Settings this deployment sets that the code does not read yet (see docs/deploy.md).
PENDING_SETTINGS = {"BATCHINFER_MODEL_AUTH"}


@cache
def parsed() -> dict[str, dict[str, Any]]:
    files = sorted(TERRAFORM.glob("*.tf"))
    assert files, f"no .tf files in {TERRAFORM}"
    return {path.name: hcl2.load(path.open(), serialization_options=OPTIONS) for path in files}


def blocks(kind: str) -> Iterator[dict[str, Any]]:
    for document in parsed().values():
        yield from document.get(kind, [])


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for block in blocks("resource"):
        for kind, named in block.items():
            for name, body in named.items():
                assert (kind, name) not in found, f"{kind}.{name} is declared twice"
                found[(kind, name)] = body
    return found


def resource(kind: str, name: str) -> dict[str, Any]:
    found = resources()
    assert (kind, name) in found, f"terraform/ declares no {kind}.{name}"
    return found[(kind, name)]


def single(body: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested block that must appear exactly once."""
    value = body.get(key)
    assert isinstance(value, list), f"no {key} block in {sorted(body)}"
    assert len(value) == 1, f"{key} appears {len(value)} times"
    return value[0]


def variables() -> dict[str, dict[str, Any]]:
    return {name: body for block in blocks("variable") for name, body in block.items()}


def local_values() -> dict[str, Any]:
    return {name: value for block in blocks("locals") for name, value in block.items()}


def all_text(exclude: str = "") -> str:
    return "\n".join(
        path.read_text() for path in sorted(TERRAFORM.glob("*.tf")) if path.name != exclude
    )


def walk(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)
    else:
        yield value


def walk_dicts(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from walk_dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_dicts(item)


def test_providers_are_pinned_to_ranges() -> None:
    (terraform,) = [block for block in blocks("terraform") if "required_providers" in block]
    (providers,) = terraform["required_providers"]
    for name in ("google", "random"):
        version = providers[name]["version"]
        assert ">=" in version, f"{name} has no lower bound: {version}"
        assert "<" in version.replace("<=", ""), f"{name} has no upper bound: {version}"


def test_every_variable_is_typed_and_described() -> None:
    for name, body in variables().items():
        assert body.get("type"), f"variable {name} has no type"
        assert len(body.get("description", "")) > 10, f"variable {name} has no description"
    # What differs per project is asked for, never defaulted.
    for name in ("project_id", "region", "dagster_image", "model_server_image"):
        assert "default" not in variables()[name], f"variable {name} must have no default"


def test_references_resolve() -> None:
    """Stands in for `terraform validate`: every var., local. and resource reference exists
    (a moved block's ``from`` names an address that no longer exists, by design)."""
    text = re.sub(r"(?ms)^moved \{.*?^\}", "", re.sub(r"(?m)^\s*#.*$", "", all_text()))
    outside_variables = re.sub(r"(?m)^\s*#.*$", "", all_text(exclude="variables.tf"))
    declared_vars = set(variables())
    used_vars = set(re.findall(r"\bvar\.([a-z0-9_]+)", outside_variables))
    assert used_vars - declared_vars == set(), "undeclared variables"
    assert declared_vars - used_vars == set(), "unused variables"
    assert set(re.findall(r"\blocal\.([a-z0-9_]+)", text)) <= set(local_values())
    declared = {f"{kind}.{name}" for kind, name in resources()}
    used = set(re.findall(r"(?<![.\w])((?:google|random)_[a-z0-9_]+\.[a-z0-9_]+)", text))
    assert used - declared == set(), "references to undeclared resources"


def test_nothing_project_specific_is_hard_coded() -> None:
    for (kind, name), body in resources().items():
        project = body.get("project")
        if project is not None:
            assert project == "${var.project_id}", f"{kind}.{name} project={project}"
    assert not re.search(r"projects/[a-z][a-z0-9-]{4,}/", all_text())


def test_subscription_has_retry_and_dead_letter_policies() -> None:
    subscription = resource("google_pubsub_subscription", "requests")
    assert subscription["ack_deadline_seconds"] == "${var.pubsub_ack_deadline_seconds}"
    policy = single(subscription, "dead_letter_policy")
    assert policy["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert policy["max_delivery_attempts"] == "${var.pubsub_max_delivery_attempts}"
    retry = single(subscription, "retry_policy")
    assert retry["minimum_backoff"]
    assert retry["maximum_backoff"]
    dead_letter_sub = resource("google_pubsub_subscription", "dead_letter")
    assert dead_letter_sub["topic"] == "${google_pubsub_topic.dead_letter.id}"


def test_pubsub_service_agent_may_dead_letter() -> None:
    agent = local_values()["pubsub_service_agent"]
    assert agent == (
        "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    )
    grants = {
        (body.get("topic") or body.get("subscription"), body["role"])
        for (kind, _), body in resources().items()
        if kind in {"google_pubsub_topic_iam_member", "google_pubsub_subscription_iam_member"}
        and body["member"] == "${local.pubsub_service_agent}"
    }
    assert grants == {
        ("${google_pubsub_topic.dead_letter.id}", "roles/pubsub.publisher"),
        ("${google_pubsub_subscription.requests.id}", "roles/pubsub.subscriber"),
    }


def test_cloud_sql_is_private_encrypted_and_recoverable() -> None:
    instance = resource("google_sql_database_instance", "main")
    assert instance["database_version"] == "POSTGRES_16"
    assert instance["deletion_protection"] == "${var.deletion_protection}"
    assert variables()["deletion_protection"]["default"] is True
    settings = single(instance, "settings")
    ip = single(settings, "ip_configuration")
    assert ip["ipv4_enabled"] is False
    assert ip["private_network"] == "${google_compute_network.main.id}"
    assert ip["ssl_mode"] in {"ENCRYPTED_ONLY", "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"}
    assert "authorized_networks" not in ip
    backup = single(settings, "backup_configuration")
    assert backup["enabled"] is True
    assert backup["point_in_time_recovery_enabled"] is True
    assert "google_service_networking_connection.private_services" in str(instance["depends_on"])
    databases = {resource("google_sql_database", name)["name"] for name in ("app", "dagster")}
    assert databases == {"${var.app_database_name}", "${var.dagster_database_name}"}


def test_database_password_is_generated_url_safe_and_kept_in_secret_manager() -> None:
    password = resource("random_password", "db")
    assert password["special"] is False  # dagster-postgres does not escape "/" in its URL
    assert password["length"] >= 24
    assert resource("google_sql_user", "app")["password"] == "${random_password.db.result}"
    version = resource("google_secret_manager_secret_version", "db_password")
    assert version["secret_data"] == "${random_password.db.result}"


def test_no_public_members_or_buckets() -> None:
    for value in walk(list(parsed().values())):
        if isinstance(value, str):
            assert "allUsers" not in value
            assert "allAuthenticatedUsers" not in value
    buckets = [body for (kind, _), body in resources().items() if kind == "google_storage_bucket"]
    assert buckets
    for bucket in buckets:
        assert bucket["public_access_prevention"] == "enforced"
        assert bucket["uniform_bucket_level_access"] is True


def test_model_server_has_a_gpu_and_only_dagster_may_invoke_it() -> None:
    service = resource("google_cloud_run_v2_service", "model_server")
    assert service["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    template = single(service, "template")
    scaling = single(template, "scaling")
    assert scaling["min_instance_count"] == 0
    assert scaling["max_instance_count"] == "${var.model_server_max_instances}"
    assert single(template, "node_selector")["accelerator"] == "${var.model_server_gpu}"
    assert variables()["model_server_gpu"]["default"] == "nvidia-l4"
    limits = single(single(template, "containers"), "resources")["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    invokers = [
        body
        for (kind, _), body in resources().items()
        if kind == "google_cloud_run_v2_service_iam_member"
        and body["name"] == "${google_cloud_run_v2_service.model_server.name}"
    ]
    assert [(i["role"], i["member"]) for i in invokers] == [
        ("roles/run.invoker", "${local.members.run_worker}")
    ]


def cloud_run_workloads() -> dict[str, dict[str, Any]]:
    """Each Dagster Cloud Run resource's revision template (services, worker pool, jobs)."""
    return {
        "webserver": single(
            resource("google_cloud_run_v2_service", "dagster_webserver"), "template"
        ),
        "daemon": single(resource("google_cloud_run_v2_worker_pool", "dagster_daemon"), "template"),
        "run_worker": single(
            single(resource("google_cloud_run_v2_job", "run_worker"), "template"), "template"
        ),
        "cli": single(single(resource("google_cloud_run_v2_job", "cli"), "template"), "template"),
    }


def test_dagster_runs_in_the_vpc_with_its_secrets_each_as_its_own_account() -> None:
    for key, template in cloud_run_workloads().items():
        assert template["service_account"] == (
            f'${{google_service_account.workload["{key}"].email}}'
        ), key
        assert single(template, "vpc_access")["network_interfaces"], key
    daemon = resource("google_cloud_run_v2_worker_pool", "dagster_daemon")
    assert single(daemon, "scaling")["manual_instance_count"] == 1  # one daemon, never two
    secret_env = local_values()["dagster_secret_env"]
    assert set(secret_env) == {"BATCHINFER_DATABASE_URL", "DAGSTER_PG_PASSWORD"}
    # Only the load balancer (with IAP) reaches the UI.
    assert resource("google_cloud_run_v2_service", "dagster_webserver")["ingress"] == (
        "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"
    )


def test_dagster_yaml_variables_are_all_set() -> None:
    dagster_yaml = yaml.safe_load((TERRAFORM.parent / "deploy" / "dagster.yaml").read_text())
    needed = {node["env"] for node in walk_dicts(dagster_yaml) if isinstance(node.get("env"), str)}
    needed -= {"PATH"}  # the image's own
    provided = set(local_values()["dagster_pg_env"]) | set(local_values()["dagster_secret_env"])
    assert needed
    assert needed <= provided


def test_feature_view_reads_the_bigquery_table() -> None:
    table = resource("google_bigquery_table", "records")
    schema = json.loads(
        re.sub(r"(\w+)\s*=", r'"\1":', table["schema"].removeprefix("${jsonencode(")[:-2])
    )
    assert [(c["name"], c["type"]) for c in schema] == [
        ("entity_id", "STRING"),
        ("text", "STRING"),
        ("feature_timestamp", "TIMESTAMP"),
    ]
    store = resource("google_vertex_ai_feature_online_store", "records")
    assert "optimized" in store
    view = resource("google_vertex_ai_feature_online_store_featureview", "records")
    source = single(view, "big_query_source")
    assert source["uri"] == "bq://${local.bigquery_table_id}"
    assert source["entity_id_columns"] == ["entity_id"]


def test_outputs_cover_every_setting() -> None:
    outputs = {name: body for block in blocks("output") for name, body in block.items()}
    for name, body in outputs.items():
        assert body.get("description"), f"output {name} has no description"
    env_output = outputs["batchinfer_env"]["value"]
    names = set(local_values()["batchinfer_env"]) | set(re.findall(r"BATCHINFER_\w+", env_output))
    assert names >= REQUIRED_ENV, f"missing {REQUIRED_ENV - names}"
    fields = {f"BATCHINFER_{field.upper()}" for field in Settings.model_fields}
    assert names - fields <= PENDING_SETTINGS, f"not settings: {names - fields}"
    assert "random_password" not in env_output
    assert {"database_url_secret_id", "db_password_secret_id"} <= set(outputs)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH")
def test_terraform_fmt_is_clean() -> None:
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def validation_regex(variable: str) -> re.Pattern[str]:
    """The regex of a variable's `can(regex(...))` validation, as Python compiles it (RE2 and
    Python agree on these character classes and counted repetitions)."""
    (validation,) = variables()[variable]["validation"]
    found = re.search(r'regex\("(.+?)", var\.', validation["condition"])
    assert found, f"variable {variable} has no regex validation"
    return re.compile(found.group(1).replace("\\\\", "\\"))


def longest_accepted(pattern: re.Pattern[str], alphabet: str = "abcdefghij") -> str:
    """The longest value of letters the pattern accepts (it must accept some up to 64)."""
    accepted = [n for n in range(1, 65) if pattern.fullmatch(alphabet[0] + "a" * (n - 1))]
    assert accepted, f"{pattern.pattern} accepts no value"
    return "a" * max(accepted)


def render(template: str, prefix: str, project: str) -> str:
    return template.replace("${local.name}", prefix).replace("${var.project_id}", project)


# The provider's own limits (its ValidateFuncs, which a schema-only validation does not run):
# service account ids 6-30 (RFC 1035), bucket names 3-63, Cloud Run service and job names 49
# (services) / 63 (jobs): 49 for all of ours.
NAME_LIMITS = {
    "service_account_ids": (re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])"), 30),
    "bucket_names": (re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]"), 63),
    "cloud_run_names": (re.compile(r"[a-z](?:[-a-z0-9]{0,47}[a-z0-9])"), 49),
}


@pytest.mark.parametrize("kind", sorted(NAME_LIMITS))
def test_every_derived_name_fits_the_providers_limit_at_the_longest_inputs(kind: str) -> None:
    prefix = longest_accepted(validation_regex("name_prefix"))
    project = longest_accepted(validation_regex("project_id"))
    assert (len(prefix), len(project)) == (17, 30)
    pattern, limit = NAME_LIMITS[kind]
    for key, template in local_values()[kind].items():
        name = render(template, prefix, project)
        assert len(name) <= limit, f"{kind}.{key} = {name} ({len(name)} > {limit})"
        assert pattern.fullmatch(name), f"{kind}.{key} = {name} breaks {pattern.pattern}"
    # One character more than the validation allows would break the longest id.
    longest = max(local_values()["service_account_ids"].values(), key=len)
    assert len(render(longest, prefix + "a", project)) > 30


def test_names_are_only_built_in_the_names_maps() -> None:
    """A resource that builds its own name from name_prefix escapes the length test above."""
    for (kind, name), body in resources().items():
        if kind == "google_service_account":
            assert body["account_id"] == "${each.value}", name
        if kind == "google_storage_bucket":
            assert body["name"].startswith("${local.bucket_names."), name


def test_versions_lower_bound_is_the_oldest_validated_release() -> None:
    sys.path.insert(0, str(ROOT / "tools" / "terraform_schema"))
    try:
        validate = importlib.import_module("validate")
    finally:
        sys.path.pop(0)
    (terraform,) = [block for block in blocks("terraform") if "required_providers" in block]
    (providers,) = terraform["required_providers"]
    constraint = providers["google"]["version"]
    lower = re.search(r">=\s*([\d.]+)", constraint).group(1)
    upper = re.search(r"<\s*([\d.]+)", constraint).group(1)
    releases = [release.provider_version for release in validate.GOOGLE_RELEASES]

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    assert version(releases[0])[:2] == version(lower)[:2], (constraint, releases)
    assert all(version(release) < version(upper) for release in releases)
    assert version(releases[-1])[0] == version(upper)[0] - 1, "validate the newest major allowed"


def test_image_cleanup_deletes_old_versions_and_keeps_recent_ones() -> None:
    repository = resource("google_artifact_registry_repository", "images")
    policies = {policy["action"]: policy for policy in repository["cleanup_policies"]}
    assert set(policies) == {"DELETE", "KEEP"}  # KEEP alone deletes nothing
    assert single(policies["DELETE"], "condition")["older_than"]
    assert repository["cleanup_policy_dry_run"] is False


def test_apis_include_what_plan_needs() -> None:
    services = local_values()["services"]
    for api in ("cloudresourcemanager.googleapis.com", "iap.googleapis.com"):
        assert api in services


def test_model_server_starts_within_cloud_runs_probe_limit_from_local_weights() -> None:
    probe = local_values()["model_startup_probe"]
    total = probe["initial_delay_seconds"] + probe["period_seconds"] * probe["failure_threshold"]
    assert total <= 240, f"startup probe allows {total} s; Cloud Run allows 240"
    env = local_values()["model_env"]
    assert env["HF_HUB_OFFLINE"] == "1"  # never the Hub at start-up
    template = single(resource("google_cloud_run_v2_service", "model_server"), "template")
    volume = single(template, "volumes")
    assert single(volume, "gcs")["bucket"] == "${google_storage_bucket.models.name}"
    assert single(volume, "gcs")["read_only"] is True
    assert "${local.models_mount}/" in env["MODEL_NAME_OR_PATH"]


def test_webserver_probe_fits_cloud_runs_limit() -> None:
    template = single(resource("google_cloud_run_v2_service", "dagster_webserver"), "template")
    probe = single(single(template, "containers"), "startup_probe")
    assert (
        probe.get("initial_delay_seconds", 0)
        + (probe["period_seconds"] * probe["failure_threshold"])
        <= 240
    )


def test_cli_job_runs_any_command() -> None:
    """The command only waits: `--args=dagster,instance,migrate` is as runnable as batchinfer."""
    container = single(cloud_run_workloads()["cli"], "containers")
    assert container["command"] == "${local.wait_for_database}"
    assert container["args"][0] == "batchinfer"


def test_every_dagster_container_waits_for_the_database_first() -> None:
    """Direct VPC egress may have no connectivity for a minute at start: each Dagster
    container's command is the bounded wait, and what it runs is its args (the only part the
    run launcher and deploy/run.sh override)."""
    wait = local_values()["wait_for_database"]
    assert wait[:3] == ["python", "-m", "batchinfer_dagster.wait_for_database"]
    assert wait[-1] == "--"
    assert "${tostring(var.database_wait_seconds)}" in wait
    assert variables()["database_wait_seconds"]["default"] >= 180
    for name, workload in cloud_run_workloads().items():
        if name == "model_server":
            continue
        container = single(workload, "containers")
        assert container["command"] == "${local.wait_for_database}", name
        assert container["args"], name
    # The webserver's args are the image's own default command.
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", "")
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd
    assert single(cloud_run_workloads()["webserver"], "containers")["args"] == json.loads(cmd[1])


ALLOWED_PROJECT_ROLES = {
    "roles/logging.logWriter",
    "roles/bigquery.jobUser",
    "feature_store_reader",
    "feature_store_syncer",
}


def test_project_level_roles_are_only_those_with_no_resource_to_hold_them() -> None:
    text = all_text()
    for role in ("roles/editor", "roles/owner", "roles/aiplatform.user", "roles/run.admin"):
        assert role not in text, role
    project_roles = local_values()["project_roles"]
    granted = {role for roles in project_roles.values() for role in roles}
    assert granted <= ALLOWED_PROJECT_ROLES
    assert set(local_values()["feature_store_roles"]) == {
        role for role in ALLOWED_PROJECT_ROLES if not role.startswith("roles/")
    }


def test_teardown_completes() -> None:
    assert (
        resource("google_service_networking_connection", "private_services")["deletion_policy"]
        == "ABANDON"
    )
    for name in ("app", "dagster"):
        assert resource("google_sql_database", name)["deletion_policy"] == "ABANDON"
    assert resource("google_sql_user", "app")["deletion_policy"] == "ABANDON"
    for (kind, name), body in resources().items():
        if kind == "google_storage_bucket":
            assert body["force_destroy"] == "${!var.deletion_protection}", name
    assert resource("google_bigquery_table", "records")["deletion_protection"] == (
        "${var.deletion_protection}"
    )


def test_database_connections_verify_the_server() -> None:
    options = local_values()["database_url_options"]
    assert "sslmode=verify-ca" in options
    ca_file = local_values()["cloudsql_ca_file"].replace(
        "${local.cloudsql_ca_dir}", local_values()["cloudsql_ca_dir"]
    )
    assert options.endswith(f"sslrootcert={ca_file}".replace(ca_file, "${local.cloudsql_ca_file}"))
    dagster_yaml = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    params = dagster_yaml["storage"]["postgres"]["postgres_db"]["params"]
    assert params == {"sslmode": "verify-ca", "sslrootcert": ca_file}
    for key, template in cloud_run_workloads().items():
        mount = single(single(template, "containers"), "volume_mounts")
        assert mount["mount_path"] == "${local.cloudsql_ca_dir}", key
    ip = single(
        single(resource("google_sql_database_instance", "main"), "settings"), "ip_configuration"
    )
    assert ip["server_ca_mode"] == "GOOGLE_MANAGED_INTERNAL_CA"  # one CA per instance


def test_ack_deadline_outlasts_the_sensor_timeout() -> None:
    variable = variables()["pubsub_ack_deadline_seconds"]
    assert variable["default"] > 60  # Dagster's default sensor timeout
    assert local_values()["batchinfer_env"]["BATCHINFER_ACK_DEADLINE_SECONDS"] == (
        "${tostring(var.pubsub_ack_deadline_seconds)}"
    )


def test_state_is_remote() -> None:
    (terraform,) = [block for block in blocks("terraform") if "backend" in block]
    assert "gcs" in terraform["backend"][0]


def test_database_connections_are_sized_from_the_pools_they_serve() -> None:
    """max_connections follows the formula in dagster.tf, whose per-process figure is the app's
    own pool (db.py) plus Dagster's three storages."""
    db_source = (ROOT / "batchinfer_dagster" / "db.py").read_text()
    pool = re.search(r"pool_size=(\d+), max_overflow=(\d+)", db_source)
    assert pool, "batchinfer_dagster/db.py no longer sets pool_size and max_overflow"
    per_process = int(pool.group(1)) + int(pool.group(2)) + 3
    limits = local_values()["dagster_limits"]
    formula = limits["db_max_connections"]
    assert f"* {per_process} + 20" in formula, (formula, per_process)
    flags = {
        flag["name"]: flag["value"]
        for flag in single(resource("google_sql_database_instance", "main"), "settings")[
            "database_flags"
        ]
    }
    assert flags["max_connections"] == "${tostring(local.dagster_limits.db_max_connections)}"


def test_each_dataset_has_its_staging_dataset_where_the_clients_look_in_its_location() -> None:
    staging = resource("google_bigquery_dataset", "staging")
    main = resource("google_bigquery_dataset", "main")
    # The feature import's and the prediction export's datasets, and a staging one for each.
    assert sorted(local_values()["bigquery_datasets"]) == ["features", "predictions"]
    assert staging["for_each"] == main["for_each"] == "${local.bigquery_datasets}"
    assert staging["dataset_id"] == (
        "${google_bigquery_dataset.main[each.key].dataset_id}" + STAGING_DATASET_SUFFIX
    )
    assert staging["location"] == main["location"] == "${local.bigquery_location}"
    # BigQuery follows the region unless told otherwise (an EU deployment's data stays there).
    assert local_values()["bigquery_location"] == "${coalesce(var.bigquery_location, var.region)}"
    assert variables()["bigquery_location"]["default"] is None
    # What a crashed import or export leaves behind expires within a day.
    assert int(staging["default_table_expiration_ms"]) == 24 * 3600 * 1000


def test_the_datasets_keep_their_state_across_the_move_to_for_each() -> None:
    """Each dataset declared on its own before keeps its state at its new address: without a
    moved block, the next apply would destroy it (and its tables) and create it again."""
    moves = {move["from"]: move["to"] for move in blocks("moved")}
    assert moves == {
        "${google_bigquery_dataset.features}": '${google_bigquery_dataset.main["features"]}',
        "${google_bigquery_dataset.predictions}": '${google_bigquery_dataset.main["predictions"]}',
        "${google_bigquery_dataset.staging}": '${google_bigquery_dataset.staging["features"]}',
        "${google_bigquery_dataset.predictions_staging}": (
            '${google_bigquery_dataset.staging["predictions"]}'
        ),
    }


def evaluate_at_defaults(expression: object) -> object:
    """A local's value at the variables' defaults: `var.x`, `local.a.b` and arithmetic only."""
    if isinstance(expression, dict):
        return {key: evaluate_at_defaults(value) for key, value in expression.items()}
    text = str(expression)
    if not text.startswith("${"):
        return text
    body = text[2:-1]
    if re.fullmatch(r"local\.\w+", body):
        return evaluate_at_defaults(local_values()[body.split(".")[1]])
    defaults = {name: spec.get("default") for name, spec in variables().items()}
    body = re.sub(r"var\.(\w+)", lambda m: str(defaults[m[1]]), body)
    body = re.sub(
        r"local\.(\w+)\.(\w+)",
        lambda m: str(evaluate_at_defaults(local_values()[m[1]][m[2]])),
        body,
    )
    if re.fullmatch(r"[0-9 +*()]+", body):
        return eval(body)  # noqa: S307 - digits and + * ( ) only
    return body


# Regional Cloud Run quotas seen on new projects (#22): what the defaults must fit.
NEW_PROJECT_QUOTA = {"cpu": 20, "memory_gib": 40}


def test_the_defaults_fit_a_new_projects_regional_quotas() -> None:
    sizes = evaluate_at_defaults(local_values()["cloud_run_sizes"])
    assert isinstance(sizes, dict)
    cpu = sum(int(size["instances"]) * int(size["cpu"]) for size in sizes.values())
    memory = sum(
        int(size["instances"]) * int(size["memory"].removesuffix("Gi")) for size in sizes.values()
    )
    assert (cpu, memory) == (13, 34)  # docs/capacity.md and docs/deploy.md quote these
    assert cpu <= NEW_PROJECT_QUOTA["cpu"]
    assert memory <= NEW_PROJECT_QUOTA["memory_gib"]
    assert int(sizes["run_worker"]["instances"]) == 5  # max_concurrent_runs of deploy/dagster.yaml
    needed = local_values()["cloud_run_quota_needed"]
    assert needed["l4_gpus"] == "${var.model_server_max_instances}"
    assert set(sizes) == {"model_server", "webserver", "daemon", "run_worker", "cli"}


def test_max_connections_follow_the_limit_not_the_current_size() -> None:
    """Scaling the model server within its limit must not change a flag that restarts Cloud SQL."""
    formula = local_values()["dagster_limits"]["db_max_connections"]
    assert "var.model_server_max_instances_limit" in formula
    assert "var.model_server_max_instances " not in formula + " "
    assert evaluate_at_defaults(formula) == ((4 * 2 + 3) * 2 + 2 + 2 * 2 + 1) * 13 + 20
    precondition = single(
        resource("google_cloud_run_v2_service", "model_server")["lifecycle"][0], "precondition"
    )
    assert precondition["condition"] == (
        "${var.model_server_max_instances <= var.model_server_max_instances_limit}"
    )


def test_scale_knobs_reach_the_containers_and_the_image_agrees() -> None:
    """BATCHINFER_MAX_PULL from sensor_max_pull (unset: the code's default), and the numbers
    the image's dagster.yaml holds (Dagster reads no variable there) checked at plan."""
    tuning = local_values()["batchinfer_tuning_env"]
    assert "BATCHINFER_MAX_PULL" in tuning
    assert "max_pull" in Settings.model_fields
    assert variables()["sensor_max_pull"]["default"] is None
    assert "local.batchinfer_tuning_env" in local_values()["dagster_plain_env"]
    job = resource("google_cloud_run_v2_job", "run_worker")
    conditions = " ".join(p["condition"] for p in job["lifecycle"][0]["precondition"])
    assert "local.dagster_yaml.run_launcher.config.run_timeout" in conditions
    assert "local.dagster_yaml.run_monitoring.max_runtime_seconds" in conditions
    assert "local.dagster_yaml.concurrency.runs.max_concurrent_runs" in conditions
    dagster_yaml = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    runtime = variables()["run_max_runtime_seconds"]["default"]
    assert dagster_yaml["run_launcher"]["config"]["run_timeout"] == runtime
    assert dagster_yaml["run_monitoring"]["max_runtime_seconds"] == runtime
    max_runs = evaluate_at_defaults(local_values()["dagster_limits"]["max_concurrent_runs"])
    assert dagster_yaml["concurrency"]["runs"]["max_concurrent_runs"] == max_runs


def test_iap_takes_a_custom_oauth_client_for_projects_without_an_organisation() -> None:
    iap = single(resource("google_compute_backend_service", "dagster_ui"), "iap")
    assert iap["enabled"] is True
    assert iap["oauth2_client_id"] == "${var.iap_oauth_client_id}"
    assert (
        "data.google_secret_manager_secret_version.iap_oauth_client_secret"
        in (iap["oauth2_client_secret"])
    )
    assert variables()["iap_oauth_client_id"]["default"] is None  # Google-managed by default
    pattern = validation_regex("iap_oauth_client_id")
    assert pattern.fullmatch("123456789012-abc123def.apps.googleusercontent.com")
    assert not pattern.fullmatch("abc123def.apps.googleusercontent.com")
