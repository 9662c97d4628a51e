#!/usr/bin/env bash
# Step 5: everything else (15-30 minutes: Cloud SQL and the Feature Online Store are slow).
source "$(dirname "$0")/lib.sh"

# The IAP service agent invokes the webserver for signed-in users; it exists only once asked for.
gcloud beta services identity create --service=iap.googleapis.com --project="${PROJECT_ID}"
tf apply -input=false -var-file=prod.tfvars
