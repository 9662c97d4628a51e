#!/usr/bin/env bash
# Step 2: what the images need before anything runs them: the APIs, the registry, the build
# service account with its grants, the bucket the build sources go to, and the models bucket.
source "$(dirname "$0")/lib.sh"

tf apply -input=false -auto-approve -var-file=prod.tfvars \
  -target=google_project_service.enabled \
  -target=google_artifact_registry_repository_iam_member.build_writer \
  -target=google_storage_bucket_iam_member.build_source_reader \
  -target='google_project_iam_member.workload["build roles/logging.logWriter"]' \
  -target=google_storage_bucket_iam_member.model_server_reads_models
