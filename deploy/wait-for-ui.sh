#!/usr/bin/env bash
# Poll until the UI's certificate is issued (it needs the domain to resolve to the load
# balancer: with the default <ip>.nip.io it does at once), then print the URL.
source "$(dirname "$0")/lib.sh"
certificate="${NAME_PREFIX}-dagster-ui"
active() {
  [ "$(gcloud compute ssl-certificates describe "${certificate}" --global \
    --format='value(managed.status)')" = "ACTIVE" ]
}
poll 3600 60 active
url="$(tf_output dagster_ui_url)"
# IAP answers a sign-in redirect (302) once the load balancer serves the certificate.
serving() { curl -s -o /dev/null -w '%{http_code}' "${url}" | grep -qE '^(302|200)$'; }
poll 900 30 serving
echo "${url}"
