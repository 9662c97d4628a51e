"""tools/compose-rehearsal: compose.yaml's services started as Compose would, without Docker.

The rehearsal itself (slow: every service, then a prediction through the stack) and the rules
it follows to read compose.yaml: the start order of ``depends_on``, healthcheck commands,
Compose durations, and an image's CMD for a service that names no command.
"""

from __future__ import annotations

import subprocess

import pytest

from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools.compose_rehearsal import (
    RehearsalError,
    command_line,
    healthcheck_argv,
    seconds,
    start_order,
)
from tests.services import unavailable


def test_start_order_puts_each_service_after_its_dependencies() -> None:
    services = {
        "webserver": {"depends_on": {"code": {"condition": "service_healthy"}}},
        "code": {"depends_on": {"setup": {}, "db": {}}},
        "setup": {"depends_on": {"db": {}}},
        "db": {},
    }
    assert start_order(services) == ["db", "setup", "code", "webserver"]


def test_a_depends_on_cycle_is_refused() -> None:
    services = {"a": {"depends_on": {"b": {}}}, "b": {"depends_on": {"a": {}}}}
    with pytest.raises(RehearsalError, match="cycle: a -> b -> a"):
        start_order(services)


@pytest.mark.parametrize(
    ("duration", "expected"), [("5s", 5), ("120s", 120), ("2m", 120), ("1m30s", 90), ("500ms", 0.5)]
)
def test_compose_durations(duration: str, expected: float) -> None:
    assert seconds(duration) == expected


def test_healthcheck_forms() -> None:
    assert healthcheck_argv(["CMD", "pg_isready", "-h", "x"]) == ["pg_isready", "-h", "x"]
    assert healthcheck_argv(["CMD-SHELL", "curl -f x || exit 1"]) == [
        "sh",
        "-c",
        "curl -f x || exit 1",
    ]
    with pytest.raises(RehearsalError, match="neither"):
        healthcheck_argv(["NONE"])


def test_a_service_without_a_command_runs_its_images_cmd() -> None:
    assert command_line({"image": "batchinfer-model-server:local"}) == [
        "python3",
        "-m",
        "model_server",
    ]
    assert command_line({"image": "batchinfer-dagster:local", "command": ["x"]}) == ["x"]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.pubsub
def test_the_compose_stack_predicts_without_docker() -> None:
    """Every service of compose.yaml up in order, healthy by its own check, one prediction."""
    probe = subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        unavailable("unshare -n -m (private network and mount namespaces) is not permitted here")
    result = subprocess.run(
        [str(REPO_ROOT / "tools" / "compose-rehearsal")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for service in ("postgres", "pubsub-emulator", "model-server", "code-location", "webserver"):
        assert f"   {service} healthy" in result.stdout
    assert "   setup completed" in result.stdout
    assert '"labels": [' in result.stdout
    assert "compute logs in the shared storage volume" in result.stdout
