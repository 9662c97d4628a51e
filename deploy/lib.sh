# Sourced by every deploy/ step: the settings written by 00-configure.sh, strict mode, and
# helpers. Each step is its own script so that nothing depends on a variable of an earlier shell.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "${DEPLOY_DIR}")"
TERRAFORM_DIR="${REPO_DIR}/terraform"
SETTINGS="${DEPLOY_DIR}/deploy.env"

if [ ! -f "${SETTINGS}" ]; then
  echo "no ${SETTINGS}: run deploy/00-configure.sh PROJECT_ID REGION first" >&2
  exit 1
fi
# shellcheck source=/dev/null
source "${SETTINGS}"

tf() { terraform -chdir="${TERRAFORM_DIR}" "$@"; }
tf_output() { tf output -raw "$1"; }

# Poll a command until it succeeds: every $2 seconds, at most $1 seconds, then fail loudly.
poll() {
  local timeout="$1" interval="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if [ "${SECONDS}" -ge "${deadline}" ]; then
      echo "gave up after ${timeout} s waiting for: $*" >&2
      return 1
    fi
    sleep "${interval}"
  done
}
