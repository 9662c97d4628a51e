"""``make stack``'s setup, as ``make stack`` runs it, and what it hands to ``make run``.

``batchinfer_tools.stack.running_stack`` is everything ``make stack`` does before ``make run``:
PostgreSQL and the Pub/Sub emulator started, the two databases and the topology created, a
Dagster instance config on PostgreSQL and the settings (``env.sh``) written. The test then does
what ``make run`` does with them first (``batchinfer where``, ``batchinfer db upgrade``, the
Dagster instance from ``DAGSTER_HOME``) and checks that the stack is gone after it stops.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from dagster import DagsterInstance
from dagster._core.run_coordinator import QueuedRunCoordinator
from google.cloud import pubsub_v1

from batchinfer_dagster.settings import Settings
from batchinfer_testing import services
from batchinfer_testing.foreground import Output, ctrl_c, kill_processes_with
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools.stack import Stack, running_stack
from tests.services import unavailable

BATCHINFER = str(Path(sys.executable).parent / "batchinfer")
# Bounds on a hung start and stop of the stand-in stack (seconds), not measurements: the
# servers start in seconds on a quiet machine; CI runs at load 16.
START_DEADLINE_S = 300
STOP_DEADLINE_S = 180
pytestmark = [pytest.mark.postgres, pytest.mark.pubsub]


def batchinfer(stack: Stack, *args: str) -> str:
    """A CLI command in a shell that sourced the stack's env.sh, as the README says."""
    script = f"source {shlex.quote(str(stack.env_file))} && exec {BATCHINFER} {shlex.join(args)}"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=False, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_make_stack_setup_hands_make_run_a_postgres_and_pubsub_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        context = running_stack()
        stack = context.__enter__()
    except services.ServiceUnavailableError as error:
        unavailable(str(error))
    try:
        emulator_port = int(stack.emulator_host.rpartition(":")[2])
        # env.sh exports exactly the stack's settings, and they load.
        sourced = subprocess.run(
            ["bash", "-c", f"source {shlex.quote(str(stack.env_file))} && env -0"],
            capture_output=True,
            check=True,
            env={"PATH": os.environ["PATH"]},
        ).stdout.decode()
        exported = dict(item.split("=", 1) for item in sourced.split("\0") if "=" in item)
        assert {name: exported[name] for name in stack.environment} == stack.environment
        for name, value in stack.environment.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert settings.queue == "pubsub"
        assert sa.make_url(settings.resolved_database_url).database == "batchinfer"

        # `make run`'s first steps: where the state is, then the schema.
        where = batchinfer(stack, "where")
        assert f"127.0.0.1:{stack.postgres_port}/batchinfer" in where
        assert f"emulator {stack.emulator_host}" in where
        assert str(stack.dagster_home) in where
        assert "newest schema" in batchinfer(stack, "db", "upgrade")
        engine = sa.create_engine(settings.resolved_database_url)
        try:
            with engine.connect() as connection:
                tables = set(sa.inspect(connection).get_table_names())
        finally:
            engine.dispose()
        assert {"data_points", "features", "alembic_version"} <= tables

        # The topology `batchinfer pubsub create` made: a subscription with dead-lettering.
        subscriber = pubsub_v1.SubscriberClient()
        try:
            subscription = subscriber.get_subscription(
                subscription=subscriber.subscription_path(
                    settings.pubsub_project, settings.pubsub_subscription
                )
            )
        finally:
            subscriber.close()
        assert subscription.topic.endswith(f"/topics/{settings.pubsub_topic}")
        assert subscription.dead_letter_policy.dead_letter_topic.endswith(
            f"/topics/{settings.pubsub_dead_letter_topic}"
        )

        # Dagster's instance, as `dg dev` opens it from DAGSTER_HOME: storage on PostgreSQL,
        # the local config's queue and pool limit kept.
        local = yaml.safe_load((REPO_ROOT / "dagster.local.yaml").read_text())
        with DagsterInstance.from_config(str(stack.dagster_home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
            assert instance.get_runs() == []
            pools = instance.get_concurrency_config().pool_config
            assert pools.default_pool_limit == local["concurrency"]["pools"]["default_limit"]
        assert answers(stack.postgres_port)
        assert answers(emulator_port)
    finally:
        context.__exit__(None, None, None)
    # Stopped: both servers gone, the temporary home removed.
    assert not answers(stack.postgres_port)
    assert not answers(emulator_port)
    assert not stack.home.exists()


# `make run` stand-in: on SIGINT it takes a second to stop, as dg dev does, and records whether
# PostgreSQL and the emulator still answered while it was stopping.
FAKE_MAKE_RUN = """
import json, os, signal, socket, sys, time

def answers(host, port):
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0

def stop(*_):
    time.sleep(1)
    postgres = os.environ["BATCHINFER_DATABASE_URL"].split("@127.0.0.1:")[1].split("/")[0]
    host, _, port = os.environ["PUBSUB_EMULATOR_HOST"].rpartition(":")
    report = {"postgres": answers("127.0.0.1", postgres), "emulator": answers(host, port)}
    with open(os.environ["STOP_REPORT"], "w") as handle:
        json.dump(report, handle)
    sys.exit(0)

signal.signal(signal.SIGINT, stop)
print("make run is up", flush=True)
while True:
    time.sleep(0.1)
"""


def test_ctrl_c_on_make_stack_stops_make_run_before_the_servers(tmp_path: Path) -> None:
    """Ctrl-C reaches the terminal's foreground group (``make stack`` itself): make run stops
    first with the servers still up, then the servers, then the temporary home; no traceback."""
    if not shutil.which("initdb") or not shutil.which("gcloud"):
        unavailable("PostgreSQL server binaries or the gcloud emulator are not on PATH")
    report = tmp_path / "stop.json"
    # Started with SIGINT ignored, as a script's background job is (CI's): make stack must
    # handle the Ctrl-C all the same.
    program = (
        "import signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from batchinfer_tools.stack import main\n"
        f"sys.exit(main([sys.executable, '-c', {FAKE_MAKE_RUN!r}]))"
    )
    stack = subprocess.Popen(
        [sys.executable, "-c", program],
        env={**os.environ, "STOP_REPORT": str(report)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output(stack)
    try:
        try:
            up = output.until("make run is up", time.monotonic() + START_DEADLINE_S)
            assert up, output.text()
            env_file = Path(next(line for line in output.lines if "source" in line).split()[-1])
            assert env_file.is_absolute(), output.text()
            assert env_file.exists(), output.text()
        finally:
            ended = ctrl_c(stack, output, STOP_DEADLINE_S)
    finally:
        # A stop that failed must not leave the servers or the stand-in running.
        left = kill_processes_with(f"STOP_REPORT={report}")
    out = output.text()
    assert ended, out
    assert left == [], out
    activate = next(line for line in output.lines if "source" in line).split()[4]
    assert Path(activate).is_absolute(), out
    assert Path(activate).exists(), out

    assert stack.returncode == 0, out
    assert output.lines[-1].startswith("stopped PostgreSQL and the emulator; removed "), out
    assert json.loads(report.read_text()) == {"postgres": True, "emulator": True}
    assert "Traceback" not in out
    assert not env_file.parent.exists()
