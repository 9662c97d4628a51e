"""The arguments `batchinfer deploy-model` gives Vertex AI, checked before any billed call."""

from __future__ import annotations

import pytest

from batchinfer_dagster.deploy import (
    DeployedModel,
    deploy_arguments,
    deploy_model,
    upload_arguments,
)

IMAGE = "europe-west4-docker.pkg.dev/p/batchinfer/model-server:1"


def upload(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "image_uri": IMAGE,
        "display_name": "batchinfer-model-server",
        "model_backend": "nli",
        "model_name_or_path": "facebook/bart-large-mnli",
        "artifact_uri": None,
        "max_batch_size": 32,
        "extra_env": {},
    } | overrides
    return upload_arguments(**arguments)  # type: ignore[arg-type]


def deploy(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "display_name": "m",
        "machine_type": "g2-standard-8",
        "accelerator_type": "NVIDIA_L4",
        "accelerator_count": 1,
        "min_replica_count": 1,
        "max_replica_count": 3,
        "service_account": None,
    } | overrides
    return deploy_arguments(**arguments)  # type: ignore[arg-type]


def test_upload_uses_the_model_server_contract() -> None:
    arguments = upload(extra_env={"MODEL_FP16": "true"})
    assert arguments["serving_container_image_uri"] == IMAGE
    assert arguments["serving_container_predict_route"] == "/predict"
    assert arguments["serving_container_health_route"] == "/health"
    assert arguments["serving_container_ports"] == [8080]
    assert arguments["serving_container_environment_variables"] == {
        "MODEL_BACKEND": "nli",
        "MODEL_NAME_OR_PATH": "facebook/bart-large-mnli",
        "MODEL_MAX_BATCH_SIZE": "32",
        "MODEL_FP16": "true",
        "HF_HUB_OFFLINE": "0",
    }


def test_nli_without_a_model_is_refused() -> None:
    with pytest.raises(ValueError, match="needs model_name_or_path"):
        upload(model_name_or_path=None)
    assert upload(model_name_or_path=None, artifact_uri="gs://b/m")["artifact_uri"] == "gs://b/m"


def test_vertex_owned_environment_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['AIP_STORAGE_URI'\] is set by Vertex AI"):
        upload(extra_env={"AIP_STORAGE_URI": "gs://b/m"})


def test_deploy_with_a_gpu() -> None:
    arguments = deploy()
    assert arguments["accelerator_type"] == "NVIDIA_L4"
    assert arguments["accelerator_count"] == 1
    assert (arguments["min_replica_count"], arguments["max_replica_count"]) == (1, 3)


def test_deploy_on_cpu_sends_no_accelerator() -> None:
    arguments = deploy(machine_type="n1-standard-8", accelerator_type=None)
    assert "accelerator_type" not in arguments
    assert "accelerator_count" not in arguments


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"accelerator_type": "nvidia-l4"}, "not a Vertex AI accelerator"),
        ({"accelerator_count": 0}, "needs at least 1"),
        ({"min_replica_count": 0}, "need 1 <= min <= max"),
        ({"min_replica_count": 4}, "need 1 <= min <= max"),
    ],
)
def test_bad_deploy_arguments_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deploy(**overrides)


def test_deploy_model_checks_before_calling_vertex() -> None:
    with pytest.raises(ValueError, match="not a Vertex AI accelerator"):
        deploy_model(project="p", region="europe-west4", image_uri=IMAGE, accelerator_type="T4")


def test_model_url_is_the_vertex_url() -> None:
    deployed = DeployedModel(
        model="projects/1/locations/europe-west4/models/2",
        endpoint="projects/1/locations/europe-west4/endpoints/3",
    )
    assert deployed.model_url == "vertex://projects/1/locations/europe-west4/endpoints/3"


def test_an_artifact_keeps_the_hub_offline() -> None:
    env = upload(model_name_or_path=None, artifact_uri="gs://b/m")[
        "serving_container_environment_variables"
    ]
    assert "HF_HUB_OFFLINE" not in env
    assert "MODEL_NAME_OR_PATH" not in env
