"""Put the model-server image on a Vertex AI endpoint (``batchinfer deploy-model``).

It lives with the model server (whose container contract it encodes) behind the ``vertex`` extra
(``google-cloud-aiplatform``), which the serving image does not install.

Vertex AI runs the image as a custom container: it sets ``AIP_HTTP_PORT``, ``AIP_PREDICT_ROUTE``
and ``AIP_HEALTH_ROUTE`` from the model's container spec and ``AIP_STORAGE_URI`` from its
artifact URI, which is exactly what the model server reads. The arguments are built by pure
functions so they are checked (and testable) before the slow, billed calls start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.cloud.aiplatform_v1 import AcceleratorType

from model_server.settings import ServerSettings

# The port and routes the image serves when Vertex AI sets nothing else: ServerSettings'
# declared ones, told to Vertex AI in the container spec.
_DECLARED = ServerSettings.declared()
MODEL_SERVER_PORT = _DECLARED.aip_http_port
PREDICT_ROUTE = _DECLARED.aip_predict_route
HEALTH_ROUTE = _DECLARED.aip_health_route


@dataclass(frozen=True)
class DeployedModel:
    """Where the model now serves; ``model_url`` is the value of ``BATCHINFER_MODEL_URL``."""

    model: str
    endpoint: str

    @property
    def model_url(self) -> str:
        return f"vertex://{self.endpoint}"


def upload_arguments(
    *,
    image_uri: str,
    display_name: str,
    model_backend: str,
    model_name_or_path: str | None,
    artifact_uri: str | None,
    max_batch_size: int,
    extra_env: Mapping[str, str],
) -> dict[str, Any]:
    """Keyword arguments of ``aiplatform.Model.upload`` for our model-server image."""
    env = {"MODEL_BACKEND": model_backend, "MODEL_MAX_BATCH_SIZE": str(max_batch_size)}
    if model_name_or_path:
        env["MODEL_NAME_OR_PATH"] = model_name_or_path
    if artifact_uri is None:
        # The image is built with HF_HUB_OFFLINE=1; without an artifact the Hub is the source.
        env["HF_HUB_OFFLINE"] = "0"
    reserved = sorted(key for key in extra_env if key.startswith("AIP_"))
    if reserved:
        raise ValueError(
            f"environment {reserved} is set by Vertex AI from the model spec; "
            "pass artifact_uri instead of AIP_STORAGE_URI; the routes and port are fixed"
        )
    env.update(extra_env)
    if model_backend == "nli" and not (model_name_or_path or artifact_uri):
        raise ValueError(
            "model_backend='nli' needs model_name_or_path (e.g. facebook/bart-large-mnli) or "
            "artifact_uri (a gs:// folder with the model files)"
        )
    return {
        "display_name": display_name,
        "serving_container_image_uri": image_uri,
        "serving_container_predict_route": PREDICT_ROUTE,
        "serving_container_health_route": HEALTH_ROUTE,
        "serving_container_ports": [MODEL_SERVER_PORT],
        "serving_container_environment_variables": env,
        "artifact_uri": artifact_uri,
        "sync": True,
    }


def deploy_arguments(
    *,
    display_name: str,
    machine_type: str,
    accelerator_type: str | None,
    accelerator_count: int,
    min_replica_count: int,
    max_replica_count: int,
    service_account: str | None,
) -> dict[str, Any]:
    """Keyword arguments of ``Model.deploy``, checked before a deployment that takes minutes."""
    if not 1 <= min_replica_count <= max_replica_count:
        raise ValueError(
            f"replicas min={min_replica_count} max={max_replica_count}: need 1 <= min <= max "
            "(a dedicated Vertex endpoint keeps at least one replica)"
        )
    arguments: dict[str, Any] = {
        "deployed_model_display_name": display_name,
        "machine_type": machine_type,
        "min_replica_count": min_replica_count,
        "max_replica_count": max_replica_count,
        "traffic_percentage": 100,
        "service_account": service_account,
        "sync": True,
    }
    if accelerator_type:
        known = {a.name for a in AcceleratorType} - {"ACCELERATOR_TYPE_UNSPECIFIED"}
        if accelerator_type not in known:
            raise ValueError(
                f"accelerator_type={accelerator_type!r} is not a Vertex AI accelerator; "
                f"use one of {sorted(known)}"
            )
        if accelerator_count < 1:
            raise ValueError(f"accelerator_count={accelerator_count}: needs at least 1")
        arguments |= {"accelerator_type": accelerator_type, "accelerator_count": accelerator_count}
    return arguments


def deploy_model(
    *,
    project: str,
    region: str,
    image_uri: str,
    display_name: str = "batchinfer-model-server",
    endpoint_id: str | None = None,
    machine_type: str = "g2-standard-8",
    accelerator_type: str | None = "NVIDIA_L4",
    accelerator_count: int = 1,
    min_replica_count: int = 1,
    max_replica_count: int = 2,
    model_backend: str = "nli",
    model_name_or_path: str | None = "facebook/bart-large-mnli",
    artifact_uri: str | None = None,
    max_batch_size: int = _DECLARED.model_max_batch_size,
    service_account: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> DeployedModel:
    """Upload the model-server image as a Vertex AI Model and deploy it to an endpoint.

    ``endpoint_id`` names an existing endpoint to deploy to (its traffic moves to the new
    model); without it a new endpoint named after ``display_name`` is created. The default
    machine is the L4 GPU shape (g2-standard-8 + one NVIDIA_L4); for CPU serving pass e.g.
    ``machine_type="n1-standard-8", accelerator_type=None``. ``service_account`` is the identity
    the container runs as (it needs read access to ``artifact_uri``). Returns the model and
    endpoint resource names; set ``BATCHINFER_MODEL_URL`` to ``result.model_url``.
    Blocks until the deployment is done (typically 10–20 minutes on a GPU).
    """
    upload = upload_arguments(
        image_uri=image_uri,
        display_name=display_name,
        model_backend=model_backend,
        model_name_or_path=model_name_or_path,
        artifact_uri=artifact_uri,
        max_batch_size=max_batch_size,
        extra_env=extra_env or {},
    )
    deploy = deploy_arguments(
        display_name=display_name,
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        min_replica_count=min_replica_count,
        max_replica_count=max_replica_count,
        service_account=service_account,
    )
    from google.cloud import aiplatform

    aiplatform.init(project=project, location=region)
    model = aiplatform.Model.upload(**upload)
    if endpoint_id:
        endpoint = aiplatform.Endpoint(endpoint_id)
    else:
        endpoint = aiplatform.Endpoint.create(display_name=display_name, sync=True)
    model.deploy(endpoint=endpoint, **deploy)
    return DeployedModel(model=model.resource_name, endpoint=endpoint.resource_name)
