#!/usr/bin/env bash
# Delete the deployment: lift the deletion protection (Cloud SQL, the BigQuery table, buckets
# with objects), then destroy. The state bucket is kept; delete it by hand at the very end:
#   gcloud storage rm --recursive gs://PROJECT-tfstate
source "$(dirname "$0")/lib.sh"

tf apply -input=false -auto-approve -var-file=prod.tfvars -var=deletion_protection=false
tf destroy -input=false -auto-approve -var-file=prod.tfvars -var=deletion_protection=false
