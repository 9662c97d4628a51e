#!/usr/bin/env bash
# Run one command in the VPC as an execution of the CLI job, wait for it, print its output.
#   deploy/run.sh batchinfer status
#   deploy/run.sh batchinfer publish '{"id": "1"}'
#   deploy/run.sh dagster instance migrate
# Exits with the execution's outcome.
source "$(dirname "$0")/lib.sh"
if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGUMENT...]" >&2
  exit 2
fi

job="$(tf_output cli_job)"
# gcloud splits --args at a delimiter: pick one that occurs in no argument.
delimiter=""
for candidate in '|' '~' '^' '#' '%' '!' '@'; do
  if [[ "$*" != *"${candidate}"* ]]; then delimiter="${candidate}"; break; fi
done
[ -n "${delimiter}" ] || { echo "every delimiter gcloud could use occurs in the arguments" >&2; exit 2; }
joined="$(printf "%s${delimiter}" "$@")"
joined="${joined%"${delimiter}"}"

status=0
execution="$(gcloud run jobs execute "${job}" --region="${REGION}" --wait \
  --args="^${delimiter}^${joined}" --format='value(metadata.name)')" || status=$?
if [ -z "${execution}" ]; then
  execution="$(gcloud run jobs executions list --job="${job}" --region="${REGION}" \
    --limit=1 --sort-by=~metadata.creationTimestamp --format='value(metadata.name)')"
fi

filter="resource.type=\"cloud_run_job\" AND resource.labels.job_name=\"${job}\" AND labels.\"run.googleapis.com/execution_name\"=\"${execution}\""
# The CLI's answers are JSON lines, which Cloud Logging keeps as jsonPayload; other output as
# textPayload: log_payloads.py prints either, one line per entry.
logs() {
  gcloud logging read "${filter}" --order=asc --limit=1000 --format=json \
    | python3 "${DEPLOY_DIR}/log_payloads.py"
}
# Logs reach Cloud Logging a few seconds after the execution ends: poll for them.
have_logs() { [ -n "$(logs)" ]; }
poll 120 5 have_logs || true
logs
exit "${status}"
