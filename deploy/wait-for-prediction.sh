#!/usr/bin/env bash
# Poll until record ID has a prediction, then print it (the sensor pulls the request, a
# predictions run starts a GPU instance from zero: minutes the first time).
#   deploy/wait-for-prediction.sh ID [TIMEOUT_SECONDS]   default 900
source "$(dirname "$0")/lib.sh"
record_id="$1" timeout="${2:-900}"

has_prediction() {
  "${DEPLOY_DIR}/run.sh" batchinfer prediction "${record_id}" | tee /dev/stderr \
    | grep -q '"prediction": {'
}
poll "${timeout}" 30 has_prediction
