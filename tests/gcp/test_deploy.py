"""The arguments `batchinfer deploy-model` gives Vertex AI, checked before any billed call."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from model_server.vertex_deploy import (
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


# The guide (docs/deploy.md) and its scripts (deploy/): what can be checked without a project.
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GUIDE = (ROOT / "docs" / "deploy.md").read_text()


def scripts() -> list[Path]:
    found = sorted(DEPLOY.glob("*.sh"))
    assert found
    return found


def terraform_names(kind: str) -> set[str]:
    text = "\n".join(path.read_text() for path in (ROOT / "terraform").glob("*.tf"))
    if kind == "output":
        return set(re.findall(r'^output "(\w+)"', text, re.MULTILINE))
    return {
        f"{type_}.{name}"
        for type_, name in re.findall(r'^resource "(\w+)" "(\w+)"', text, re.MULTILINE)
    }


@pytest.mark.parametrize("script", scripts(), ids=lambda path: path.name)
def test_every_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_script_the_guide_runs_exists_and_is_executable() -> None:
    named = set(re.findall(r"\bdeploy/([\w-]+\.sh)\b", GUIDE))
    assert {"00-configure.sh", "05-apply.sh", "run.sh", "99-teardown.sh"} <= named
    for name in named:
        path = DEPLOY / name
        assert path.is_file(), f"docs/deploy.md runs deploy/{name}, which does not exist"
        assert os.access(path, os.X_OK), f"deploy/{name} is not executable"


def test_scripts_read_only_outputs_that_exist() -> None:
    outputs = terraform_names("output")
    for script in scripts():
        for name in re.findall(r"tf_output (\w+)|tf output -json (\w+)", script.read_text()):
            output = name[0] or name[1]
            assert output in outputs, f"{script.name} reads the undeclared output {output}"


def test_targeted_apply_names_declared_resources() -> None:
    declared = terraform_names("resource")
    text = (DEPLOY / "02-foundation.sh").read_text()
    targets = re.findall(r"-target='?([\w.]+)", text)
    assert targets
    for target in targets:
        assert target in declared, f"02-foundation.sh targets the undeclared {target}"


def test_waits_poll_instead_of_sleeping() -> None:
    for path in [*scripts(), ROOT / "docs" / "deploy.md"]:
        for line in path.read_text().splitlines():
            if re.search(r"\bsleep\b", line):
                assert path.name == "lib.sh", f"{path.name}: {line}"
                assert '"${interval}"' in line, f"{path.name}: {line}"


def test_no_step_depends_on_an_earlier_shells_variable() -> None:
    """Each script sources deploy/lib.sh (settings from deploy.env), except the one writing it."""
    for script in scripts():
        if script.name in {"00-configure.sh", "lib.sh"}:
            continue
        assert 'source "$(dirname "$0")/lib.sh"' in script.read_text(), script.name
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE, re.DOTALL)
    for block in blocks:
        assert "export " not in block, f"the guide sets a shell variable: {block}"


def test_the_guide_never_asks_for_editor() -> None:
    assert "roles/editor" not in GUIDE
    assert "roles/owner" not in GUIDE


def test_cloud_build_pushes_the_images_terraform_runs() -> None:
    config = yaml.safe_load((DEPLOY / "cloudbuild.yaml").read_text())
    assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # a user-specified account
    assert config["images"] == ["${_REGISTRY}/dagster:${_TAG}", "${_REGISTRY}/model-server:${_TAG}"]
    configure = (DEPLOY / "00-configure.sh").read_text()
    assert 'dagster_image      = "${registry}/dagster:${tag}"' in configure
    assert 'model_server_image = "${registry}/model-server:${tag}"' in configure


# Cloud Build, "Cloud Build locations": where new, low-usage projects may build.
NEW_PROJECT_BUILD_REGIONS = {
    "us-central1",
    "us-west2",
    "europe-west1",
    "asia-east1",
    "australia-southeast1",
    "southamerica-east1",
}


def test_images_are_built_in_a_build_region_not_the_deployment_region() -> None:
    configure = (DEPLOY / "00-configure.sh").read_text()
    default = re.search(r'build_region="\$\{4:-([a-z0-9-]+)\}"', configure)
    assert default
    assert default[1] in NEW_PROJECT_BUILD_REGIONS
    build = (DEPLOY / "03-build-images.sh").read_text()
    assert '--region="${BUILD_REGION}"' in build
    assert '--region="${REGION}"' not in build


@pytest.mark.parametrize(
    ("arguments", "build_region"),
    [((), "us-central1"), (("v2", "europe-west1"), "europe-west1")],
)
def test_configure_writes_the_build_region(
    tmp_path: Path, arguments: tuple[str, ...], build_region: str
) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns("deploy.env"))
    (tmp_path / "terraform").mkdir()
    script = tmp_path / "deploy" / "00-configure.sh"
    subprocess.run([str(script), "p-123456", "europe-west4", *arguments], check=True)
    written = dict(
        line.split("=", 1) for line in (tmp_path / "deploy" / "deploy.env").read_text().split()
    )
    assert (written["REGION"], written["BUILD_REGION"]) == ("europe-west4", build_region)
