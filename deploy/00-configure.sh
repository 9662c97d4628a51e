#!/usr/bin/env bash
# Step 0: write deploy/deploy.env and terraform/prod.tfvars for one deployment.
#   deploy/00-configure.sh PROJECT_ID REGION [IMAGE_TAG] [BUILD_REGION]
# BUILD_REGION is where Cloud Build runs (default us-central1), apart from REGION: Google lets
# new, low-usage projects build only in a few regions (us-central1, us-west2, europe-west1,
# asia-east1, australia-southeast1, southamerica-east1: Cloud Build, "Cloud Build locations"),
# and elsewhere a build fails with FAILED_PRECONDITION. The images still go to REGION's registry.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 PROJECT_ID REGION [IMAGE_TAG] [BUILD_REGION]   (e.g. my-batchinfer-prod europe-west4 v1 us-central1)" >&2
  exit 2
fi
deploy_dir="$(cd "$(dirname "$0")" && pwd)"
project_id="$1" region="$2" tag="${3:-v1}" build_region="${4:-us-central1}"
name_prefix="batchinfer"  # dagster.yaml names the run-worker job batchinfer-run-worker
registry="${region}-docker.pkg.dev/${project_id}/${name_prefix}"

cat >"${deploy_dir}/deploy.env" <<ENV
PROJECT_ID=${project_id}
REGION=${region}
BUILD_REGION=${build_region}
NAME_PREFIX=${name_prefix}
IMAGE_TAG=${tag}
REGISTRY=${registry}
STATE_BUCKET=${project_id}-tfstate
ENV

tfvars="$(dirname "${deploy_dir}")/terraform/prod.tfvars"
if [ ! -f "${tfvars}" ]; then
  cat >"${tfvars}" <<TFVARS
project_id         = "${project_id}"
region             = "${region}"
dagster_image      = "${registry}/dagster:${tag}"
model_server_image = "${registry}/model-server:${tag}"
# Often changed (every variable is described in terraform/variables.tf):
# dagster_ui_members         = ["user:you@example.com"]   # who may open the UI
# dagster_ui_domain          = "dagster.example.com"      # default: <ip>.nip.io
# model_server_max_instances = 1                          # GPUs at once (at most model_server_max_instances_limit, 4)
# model_gcs_path             = "bart-large-mnli"          # null: the embedding model
# db_availability_type       = "ZONAL"                    # cheaper, no standby
# bigquery_location          = "EU"                       # default: the region
# iap_oauth_client_id        = "…apps.googleusercontent.com"  # no organisation: docs/deploy.md, 8
# sensor_max_pull            = 15000                      # BATCHINFER_MAX_PULL: docs/capacity.md
TFVARS
fi
echo "wrote ${deploy_dir}/deploy.env and ${tfvars} (edit the latter, then run 01-bootstrap.sh)"
