"""Runs as Cloud Run job executions: the production dagster.yaml's CloudRunRunLauncher, with the
real google-cloud-run client, against a local fake of the Cloud Run Admin v2 API."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.test_utils import create_run_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from google.cloud import run_v2
from google.cloud.run_v2.services.executions.transports import ExecutionsGrpcTransport
from google.cloud.run_v2.services.jobs.transports import JobsGrpcTransport

from batchinfer_dagster.clients.google_grpc import grpc_client_kwargs
from batchinfer_testing.fakes.google import FakeCloudRun, cloud_run_server

ROOT = Path(__file__).resolve().parents[2]
LOCATION = "batchinfer_dagster"
JOB = "projects/p/locations/europe-west4/jobs/batchinfer-run-worker"


@pytest.fixture
def cloud_run() -> Iterator[tuple[FakeCloudRun, str]]:
    fake = FakeCloudRun()
    with cloud_run_server(fake) as endpoint:
        yield fake, endpoint


@pytest.fixture
def instance(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    adc_key_file: Path,
    cloud_run: tuple[FakeCloudRun, str],
) -> Iterator[DagsterInstance]:
    """The production dagster.yaml, its storage and logs local, its launcher's Cloud Run
    clients pointed at the fake."""
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("GOOGLE_CLOUD_REGION", "europe-west4")
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    config["compute_logs"] = {
        "module": "dagster._core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(tmp_path / "logs")},
    }
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    _, endpoint = cloud_run
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        launcher = instance.run_launcher
        launcher.jobs_client = run_v2.JobsClient(**grpc_client_kwargs(JobsGrpcTransport, endpoint))
        launcher.executions_client = run_v2.ExecutionsClient(
            **grpc_client_kwargs(ExecutionsGrpcTransport, endpoint)
        )
        yield instance


def predictions_run(instance: DagsterInstance) -> str:
    """A queued-then-launched run of predictions_job, with the origins the daemon gives it."""
    target = LoadableTargetOrigin(
        executable_path=sys.executable,
        module_name="batchinfer_dagster.definitions",
        working_directory=str(ROOT),
    )
    code_pointer = ModuleCodePointer(
        module="batchinfer_dagster.definitions", fn_name="defs", working_directory=str(ROOT)
    )
    run = create_run_for_test(
        instance,
        job_name="predictions_job",
        remote_job_origin=RemoteJobOrigin(
            repository_origin=RemoteRepositoryOrigin(
                code_location_origin=InProcessCodeLocationOrigin(
                    loadable_target_origin=target, location_name=LOCATION
                ),
                repository_name="__repository__",
            ),
            job_name="predictions_job",
        ),
        job_code_origin=JobPythonOrigin(
            job_name="predictions_job",
            repository_origin=RepositoryPythonOrigin(
                executable_path=sys.executable, code_pointer=code_pointer
            ),
        ),
    )
    return run.run_id


def test_a_run_becomes_an_execution_of_the_run_worker_job(
    instance: DagsterInstance, cloud_run: tuple[FakeCloudRun, str]
) -> None:
    fake, _ = cloud_run
    run_id = predictions_run(instance)

    instance.launch_run(run_id, workspace=None)  # type: ignore[arg-type]

    (request,) = fake.runs
    assert request.name == JOB
    (override,) = request.overrides.container_overrides
    # The daemon's interpreter runs the run: the worker must be the same image (the job's
    # image is var.dagster_image, as the daemon's), where that path exists.
    assert override.args[0] == sys.executable
    assert list(override.args[1:5]) == ["-m", "dagster", "api", "execute_run"]
    assert run_id in override.args[5]  # the serialized ExecuteRunArgs
    assert request.overrides.timeout.seconds == instance.run_launcher.run_timeout
    run = instance.get_run_by_id(run_id)
    assert run is not None
    execution_id = run.tags["cloud_run_job_execution_id"]
    assert f"{JOB}/executions/{execution_id}" in fake.states


def test_run_monitoring_sees_a_worker_die(
    instance: DagsterInstance, cloud_run: tuple[FakeCloudRun, str]
) -> None:
    """What run monitoring asks: a running execution is RUNNING; one whose container died (or
    passed its timeout) is FAILED, so monitoring fails the run and frees its pool slot."""
    fake, _ = cloud_run
    run_id = predictions_run(instance)
    instance.launch_run(run_id, workspace=None)  # type: ignore[arg-type]
    run = instance.get_run_by_id(run_id)
    assert run is not None
    launcher = instance.run_launcher
    (execution,) = fake.states

    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    fake.states[execution] = "failed"
    assert launcher.check_run_worker_health(run).status == WorkerStatus.FAILED
    fake.states[execution] = "succeeded"
    assert launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS


def test_a_refused_launch_fails_the_run(
    instance: DagsterInstance, cloud_run: tuple[FakeCloudRun, str]
) -> None:
    """A launch Cloud Run refuses (a missing role, a wrong job name) fails the run at once,
    with the error in its events, instead of leaving it STARTING."""
    fake, _ = cloud_run
    fake.refuse = grpc.StatusCode.PERMISSION_DENIED
    run_id = predictions_run(instance)

    with pytest.raises(Exception, match="PERMISSION_DENIED|Permission"):
        instance.launch_run(run_id, workspace=None)  # type: ignore[arg-type]

    run = instance.get_run_by_id(run_id)
    assert run is not None
    assert run.status == DagsterRunStatus.FAILURE
    assert fake.runs == []
