#!/usr/bin/env bash
# Step 1: the APIs Terraform needs before it can plan, and the bucket that holds its state.
source "$(dirname "$0")/lib.sh"

gcloud config set project "${PROJECT_ID}"
# cloudresourcemanager: data.google_project reads the project number at plan time;
# serviceusage: Terraform enables every other API itself (terraform/apis.tf).
gcloud services enable serviceusage.googleapis.com cloudresourcemanager.googleapis.com \
  storage.googleapis.com iam.googleapis.com

# The state holds the database password: a private, versioned bucket, never a local file.
if ! gcloud storage buckets describe "gs://${STATE_BUCKET}" >/dev/null 2>&1; then
  gcloud storage buckets create "gs://${STATE_BUCKET}" --location="${REGION}" \
    --uniform-bucket-level-access --public-access-prevention
  gcloud storage buckets update "gs://${STATE_BUCKET}" --versioning
fi
tf init -input=false -backend-config="bucket=${STATE_BUCKET}"
