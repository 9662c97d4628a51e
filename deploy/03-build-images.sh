#!/usr/bin/env bash
# Step 3: build and push both images with Cloud Build, as the build service account (not the
# Compute Engine default account, which has no roles in new organisations). The build runs in
# BUILD_REGION (deploy/00-configure.sh says why), the images go to REGION's registry.
source "$(dirname "$0")/lib.sh"

build_account="$(tf_output build_service_account)"
source_bucket="$(tf_output build_source_bucket)"
cd "${REPO_DIR}"
gcloud builds submit --region="${BUILD_REGION}" \
  --config=deploy/cloudbuild.yaml \
  --service-account="${build_account}" \
  --gcs-source-staging-dir="gs://${source_bucket}/source" \
  --substitutions="_REGISTRY=${REGISTRY},_TAG=${IMAGE_TAG}" \
  .
gcloud artifacts docker images list "${REGISTRY}" --include-tags --filter="tags:${IMAGE_TAG}"
