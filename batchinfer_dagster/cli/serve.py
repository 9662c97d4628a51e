"""``serve-model`` and ``deploy-model``: the model server, locally or on Vertex AI.

The model server is its own distribution (``batchinfer-model-server``), so neither command
imports it up front, and the Dagster side never imports torch.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from batchinfer_dagster.cli.output import echo_json


@click.command("serve-model")
def serve_model() -> None:
    """Start the model server (settings from AIP_* and MODEL_* variables).

    \b
    Example:
      AIP_HTTP_PORT=8080 MODEL_BACKEND=embedding batchinfer serve-model
    """
    # The model server is its own distribution (batchinfer-model-server): run it as a program,
    # so the Dagster side never imports torch.
    try:
        os.execvp(sys.executable, [sys.executable, "-m", "model_server"])
    except OSError as error:
        raise click.ClickException(f"cannot start the model server: {error}") from error


@click.command("deploy-model")
@click.option("--project", required=True, help="Google Cloud project id.")
@click.option("--region", required=True, help="Vertex AI region, e.g. us-central1.")
@click.option("--image", "image_uri", required=True, help="Model-server image URI.")
@click.option("--endpoint-id", help="Deploy to this existing endpoint (default: a new one).")
@click.option("--machine-type", default="g2-standard-8", show_default=True)
@click.option("--accelerator-type", default="NVIDIA_L4", show_default=True, help="'' for CPU.")
@click.option("--accelerator-count", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--min-replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-replicas", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--model-backend", type=click.Choice(["nli", "embedding"]), default="nli")
@click.option("--model", "model_name_or_path", default="facebook/bart-large-mnli")
@click.option("--artifact-uri", help="gs:// folder with the model (AIP_STORAGE_URI).")
@click.option("--service-account", help="Identity the serving container runs as.")
def deploy_model_command(**options: Any) -> None:
    """Upload the model-server image as a Vertex AI Model and deploy it to an endpoint.

    Prints the BATCHINFER_MODEL_URL to use. Takes 10-20 minutes on a GPU.

    \b
    Example:
      batchinfer deploy-model --project my-project --region us-central1 \\
        --image us-central1-docker.pkg.dev/my-project/batchinfer/model-server:v1
    """
    try:
        from model_server.vertex_deploy import deploy_model
    except ModuleNotFoundError as error:
        raise click.ClickException(
            f"deploy-model needs the model server's Vertex extra ({error}): "
            "pip install './model-server[vertex]'"
        ) from error

    options["accelerator_type"] = options["accelerator_type"] or None
    options["min_replica_count"] = options.pop("min_replicas")
    options["max_replica_count"] = options.pop("max_replicas")
    try:
        deployed = deploy_model(**options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    echo_json(
        {"model": deployed.model, "endpoint": deployed.endpoint, "model_url": deployed.model_url}
    )


COMMANDS: tuple[click.Command, ...] = (serve_model, deploy_model_command)
