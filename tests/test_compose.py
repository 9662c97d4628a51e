"""compose.yaml, checked without a Docker engine: the Compose Specification, and the repository.

No engine runs here, so the file is checked for what an engine would refuse or get wrong:
the Compose Specification's own JSON schema (tools/compose_schema, copied from compose-spec),
then against this repository: every build context and Dockerfile exists and tools/check-images
builds the same images; every command parses with the real command-line interface it names
(click, without running it); the dagster.yaml it mounts passes Dagster's instance schema and
opens a Dagster instance on the real PostgreSQL of the test session; every environment variable
is a real setting; ports, hosts and the start order agree across services.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.config import pg_config
from dagster._core.workspace.config_schema import ensure_workspace_config
from dagster_postgres.utils import pg_url_from_config

from batchinfer_dagster.settings import Settings
from batchinfer_testing.command_lines import parse_command_line
from batchinfer_testing.services import PostgresServer
from batchinfer_tools.compose_rehearsal import dockerfile_env

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"
STACK_DIR = ROOT / "deploy" / "docker"
SCHEMA = ROOT / "tools" / "compose_schema" / "compose-spec.json"
DAGSTER_SERVICES = ("setup", "code-location", "webserver", "daemon", "batchinfer")
# Variables the official postgres image reads (https://hub.docker.com/_/postgres).
POSTGRES_IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def compose() -> dict:
    """compose.yaml as Compose reads it: YAML with merge keys (``<<: *anchor``) resolved."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def schema_errors(document: dict) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_follows_the_compose_specification() -> None:
    assert schema_errors(compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "setup", "depends_on", "postgres", "condition"), "service_ready"),
        (("services", "webserver", "ports"), "3000"),
        (("services", "daemon", "restart_policy"), "always"),
    ],
)
def test_the_schema_refuses_what_compose_would(path: tuple[str, ...], value: object) -> None:
    """The schema check can fail: an unknown condition, a wrong type, an unknown key."""
    document = copy.deepcopy(compose())
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(document)


# -- images ---------------------------------------------------------------------------------


def built_dockerfiles() -> set[Path]:
    dockerfiles = set()
    for service in compose()["services"].values():
        if "build" in service:
            build = service["build"]
            context = ROOT / build["context"]
            assert context.is_dir(), f"build context {build['context']} is not a folder"
            dockerfiles.add((context / build["dockerfile"]).resolve())
    return dockerfiles


def test_every_build_names_a_dockerfile_of_the_repository() -> None:
    dockerfiles = built_dockerfiles()
    assert dockerfiles == {ROOT / "Dockerfile", ROOT / "model-server" / "Dockerfile"}
    assert all(path.is_file() for path in dockerfiles)


def test_tools_check_images_builds_every_image_compose_builds() -> None:
    """The images compose builds are those tools/check-images builds and starts (with buildah)."""
    script = (ROOT / "tools" / "check-images").read_text()
    checked = {
        (ROOT / match).resolve()
        # build IMAGE DOCKERFILE STAND-IN [buildah options, maybe continued on the next lines]
        for match in re.findall(r"^build \S+ (\S+) \S+(?: .*)?$", script, flags=re.MULTILINE)
    }
    assert checked == built_dockerfiles()


def test_one_tag_is_built_from_one_dockerfile() -> None:
    """Services sharing a tag share the build; two Dockerfiles under one tag would clobber."""
    builds: dict[str, set[str]] = {}
    for service in compose()["services"].values():
        if "build" in service:
            builds.setdefault(service["image"], set()).add(service["build"]["dockerfile"])
    assert all(len(dockerfiles) == 1 for dockerfiles in builds.values()), builds


# -- commands -------------------------------------------------------------------------------


def command_lines(service: dict) -> list[list[str]]:
    """The command lines a service runs: entrypoint + command, ``sh -c 'a && b'`` split."""
    argv = [*service.get("entrypoint", []), *service.get("command", [])]
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def as_seen_here(service: dict, argv: list[str]) -> list[str]:
    """``argv`` with each path a bind mount puts in the container replaced by its source here."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = str(ROOT / source)
    return [mounts.get(arg, arg) for arg in argv]


def all_command_lines() -> Iterator[tuple[str, list[str]]]:
    services = compose()["services"]
    for name in DAGSTER_SERVICES:
        for argv in command_lines(services[name]):
            yield name, as_seen_here(services[name], argv)
    health = services["code-location"]["healthcheck"]["test"]
    yield "code-location healthcheck", health[1:]


@pytest.mark.parametrize(
    ("service", "argv"), list(all_command_lines()), ids=lambda value: str(value)
)
def test_every_command_parses_with_its_real_cli(service: str, argv: list[str]) -> None:
    context = parse_command_line(argv)
    assert context.command.callback is not None, f"{service}: {argv} names no command"


def test_the_command_check_refuses_an_unknown_option() -> None:
    with pytest.raises(click.UsageError, match="--modul"):
        parse_command_line(["dagster", "api", "grpc", "--port", "4000", "--modul", "x"])
    with pytest.raises(click.UsageError, match="No such command"):
        parse_command_line(["batchinfer", "db", "upgrades"])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_code_location_serves_the_module_the_project_names() -> None:
    (argv,) = command_lines(compose()["services"]["code-location"])
    module = option(argv, "--module-name")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert module == project["module_name"]
    assert importlib.util.find_spec(module) is not None


def test_the_model_server_image_runs_an_installed_module() -> None:
    """The model-server service runs its image's CMD (``python3 -m model_server``)."""
    service = compose()["services"]["model-server"]
    assert "command" not in service
    assert "entrypoint" not in service
    cmd_line = re.search(r"^CMD (\[.*\])$", (ROOT / "model-server/Dockerfile").read_text(), re.M)
    assert cmd_line is not None
    cmd = json.loads(cmd_line.group(1))
    assert cmd[1] == "-m"
    assert importlib.util.find_spec(f"{cmd[2]}.__main__") is not None


# -- Dagster's instance and workspace -------------------------------------------------------


def dagster_environment() -> dict[str, str]:
    environments = [compose()["services"][name]["environment"] for name in DAGSTER_SERVICES]
    assert all(env == environments[0] for env in environments), "one environment for one image"
    return environments[0]


def referenced_variables(node: object) -> set[str]:
    """Every ``{"env": NAME}`` in a Dagster config document."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(referenced_variables(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(referenced_variables(value) for value in node))
    return set()


def test_the_mounted_files_are_the_stack_files_over_the_images_dagster_home() -> None:
    dagster_home = dockerfile_env(ROOT / "Dockerfile")["DAGSTER_HOME"]
    services = compose()["services"]
    for name in DAGSTER_SERVICES:
        mounts = dict(volume.split(":")[:2] for volume in services[name]["volumes"])
        assert mounts["./deploy/docker/dagster.yaml"] == f"{dagster_home}/dagster.yaml"
        assert mounts["./deploy/docker/workspace.yaml"] == f"{dagster_home}/workspace.yaml"
        assert mounts["dagster-storage"] == f"{dagster_home}/storage"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"bind mount {source} does not exist"
            else:
                assert source in compose()["volumes"], f"volume {source} is not declared"


def test_dagster_yaml_passes_dagsters_instance_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = dagster_environment()
    config_document = yaml.safe_load((STACK_DIR / "dagster.yaml").read_text())
    dagster_variables = {name for name in environment if name.startswith("DAGSTER_")}
    assert referenced_variables(config_document) == dagster_variables
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config, custom_class = dagster_instance_config(str(STACK_DIR))
    assert custom_class is None
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["granularity"] == "run"


def test_dagster_storage_is_the_postgres_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in dagster_environment().items():
        monkeypatch.setenv(name, value)
    storage = yaml.safe_load((STACK_DIR / "dagster.yaml").read_text())["storage"]["postgres"]
    resolved = process_config(pg_config(), storage)
    assert resolved.success, resolved.errors
    assert pg_url_from_config(resolved.value) == (
        "postgresql+psycopg2://batchinfer:batchinfer@postgres:5432/dagster"
    )
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    resolved = process_config(pg_config(), storage)
    assert not resolved.success
    assert "DAGSTER_PG_PASSWORD" in str(resolved.errors)


@pytest.mark.postgres
def test_dagster_yaml_opens_an_instance_on_postgres(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack's instance, on the session's PostgreSQL in place of the `postgres` service."""
    database = f"dagster_compose_{tmp_path.name[-8:].lower().replace('-', '_')}"
    postgres.create_database(database)
    for name, value in {
        **dagster_environment(),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_DB": database,
    }.items():
        monkeypatch.setenv(name, value)
    shutil.copy(STACK_DIR / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_launcher) is DefaultRunLauncher
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.get_runs() == []
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 2
        # Compute logs under $DAGSTER_HOME/storage: the volume the webserver shares.
        assert Path(instance.compute_log_manager._base_dir).is_relative_to(tmp_path / "storage")  # noqa: SLF001


def test_workspace_points_at_the_code_location_service() -> None:
    workspace = yaml.safe_load((STACK_DIR / "workspace.yaml").read_text())
    ensure_workspace_config(workspace, str(STACK_DIR / "workspace.yaml"))
    (entry,) = workspace["load_from"]
    server = entry["grpc_server"]
    services = compose()["services"]
    (argv,) = command_lines(services["code-location"])
    assert server["host"] in services
    assert server["host"] == "code-location"
    assert str(server["port"]) == option(argv, "--port")
    assert str(server["port"]) == option(services["code-location"]["healthcheck"]["test"], "--port")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert server["location_name"] == project["code_location_name"]


# -- environment ----------------------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every variable ``Settings`` reads: ``BATCHINFER_<FIELD>`` or the field's aliases."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is not None:
            names.update(str(choice) for choice in alias.choices if str(choice).isupper())
        else:
            names.add(f"BATCHINFER_{name.upper()}")
    return names


def test_every_variable_is_a_real_setting() -> None:
    known = settings_variables()
    for name in dagster_environment():
        if not name.startswith("DAGSTER_PG_"):  # those are dagster.yaml's, checked above
            assert name in known, f"{name} is no setting of batchinfer_dagster/settings.py"
    assert set(compose()["services"]["postgres"]["environment"]) <= POSTGRES_IMAGE_VARIABLES


def test_the_environment_loads_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in dagster_environment().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.queue == "pubsub"
    assert settings.pubsub_emulator_host == "pubsub-emulator:8085"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")


# -- network --------------------------------------------------------------------------------


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_published_ports_do_not_collide_and_face_loopback_only() -> None:
    published = []
    for service in compose()["services"].values():
        for mapping in service.get("ports", []):
            interface, host, container = mapping.split(":")
            assert interface == "127.0.0.1", f"{mapping}: nothing here authenticates"
            published.append(int(host))
    assert len(published) == len(set(published)), published


def test_each_address_names_a_service_on_the_port_it_listens_on() -> None:
    services = compose()["services"]
    environment = dagster_environment()
    ports = {
        # The model server listens on its image's AIP_HTTP_PORT, on all interfaces.
        "model-server": int(dockerfile_env(ROOT / "model-server/Dockerfile")["AIP_HTTP_PORT"]),
        "pubsub-emulator": host_port(
            next(
                arg.removeprefix("--host-port=")
                for arg in services["pubsub-emulator"]["command"]
                if arg.startswith("--host-port=")
            )
        )[1],
        "postgres": 5432,  # the postgres image's port
        "webserver": int(option(command_lines(services["webserver"])[0], "--port")),
    }
    assert dockerfile_env(ROOT / "model-server/Dockerfile")["MODEL_HOST"] == "0.0.0.0"
    model_url = re.fullmatch(r"http://([^:/]+):(\d+)", environment["BATCHINFER_MODEL_URL"])
    assert model_url is not None
    assert (model_url[1], int(model_url[2])) == ("model-server", ports["model-server"])
    assert host_port(environment["PUBSUB_EMULATOR_HOST"]) == (
        "pubsub-emulator",
        ports["pubsub-emulator"],
    )
    assert (environment["DAGSTER_PG_HOST"], int(environment["DAGSTER_PG_PORT"])) == (
        "postgres",
        ports["postgres"],
    )
    assert re.search(r"@postgres:5432/batchinfer$", environment["BATCHINFER_DATABASE_URL"])
    for service in ("webserver", "model-server"):
        (mapping,) = services[service]["ports"]
        assert int(mapping.split(":")[2]) == ports[service]
    postgres = services["postgres"]["environment"]
    assert environment["DAGSTER_PG_DB"] == postgres["POSTGRES_DB"]
    assert environment["DAGSTER_PG_USER"] == postgres["POSTGRES_USER"]
    assert environment["DAGSTER_PG_PASSWORD"] == postgres["POSTGRES_PASSWORD"]
    created = (STACK_DIR / "create-databases.sql").read_text()
    assert re.search(r"^CREATE DATABASE batchinfer;$", created, re.M)


# -- start order ----------------------------------------------------------------------------


def test_services_start_in_order() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = how["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", dependency

    def before(name: str, seen: tuple[str, ...] = ()) -> set[str]:
        assert name not in seen, f"depends_on cycle: {' -> '.join((*seen, name))}"
        dependencies = set(services[name].get("depends_on", {}))
        return dependencies.union(*(before(d, (*seen, name)) for d in dependencies))

    assert before("setup") == {"postgres", "pubsub-emulator"}
    for name in ("webserver", "daemon"):
        assert before(name) >= {"code-location", "setup", "model-server", "postgres"}
    assert services["setup"]["command"][2].split(" && ") == [
        "batchinfer db upgrade",
        "batchinfer pubsub create",
        "dagster instance migrate",
    ]
