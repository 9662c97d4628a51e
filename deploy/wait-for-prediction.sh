#!/usr/bin/env bash
# Poll until record ID has a prediction, then print it (the sensor pulls the request, a
# predictions run starts a GPU instance from zero: minutes the first time).
#   deploy/wait-for-prediction.sh ID [TIMEOUT_SECONDS]   default 900
source "$(dirname "$0")/lib.sh"
record_id="$1" timeout="${2:-900}"

# The answer is the CLI's JSON line, printed by run.sh from the entry's jsonPayload. Until the
# prediction exists the command exits 1 ("no prediction for record N yet"). Captured, not piped
# into `grep -q`: under pipefail a grep that stops reading early fails the pipe it matched in.
has_prediction() {
  local output
  output="$("${DEPLOY_DIR}/run.sh" batchinfer prediction "${record_id}")" || true
  printf '%s\n' "${output}" >&2
  grep -q '"prediction": {' <<<"${output}"
}
poll "${timeout}" 30 has_prediction
