#!/usr/bin/env bash
# Step 6: the app tables, Dagster's storage, and the model_server pool limit, through the CLI
# job inside the VPC (the database has no public IP).
source "$(dirname "$0")/lib.sh"

pool_limit="$(tf output -json dagster_pool_limits | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_server_pool"])')"
"${DEPLOY_DIR}/run.sh" batchinfer db upgrade
"${DEPLOY_DIR}/run.sh" dagster instance migrate
"${DEPLOY_DIR}/run.sh" dagster instance concurrency set model_server "${pool_limit}"
