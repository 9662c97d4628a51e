# One service account per workload, each with only what that workload calls.
#   dagster: webserver, daemon (sensor + runs) and the CLI job: Pub/Sub, Cloud SQL (password
#            auth over private IP, so no Cloud SQL role), BigQuery, Vertex AI, the model server.
#   model-server: serves predictions; it calls no Google API but logging and monitoring.

resource "google_service_account" "dagster" {
  account_id   = "${local.name}-dagster"
  display_name = "batchinfer Dagster (webserver, daemon, runs, CLI)"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "model_server" {
  account_id   = "${local.name}-model-server"
  display_name = "batchinfer model server"

  depends_on = [google_project_service.enabled]
}

locals {
  dagster_member      = "serviceAccount:${google_service_account.dagster.email}"
  model_server_member = "serviceAccount:${google_service_account.model_server.email}"
}

resource "google_project_iam_member" "logging" {
  for_each = {
    dagster_logs         = ["roles/logging.logWriter", local.dagster_member]
    dagster_metrics      = ["roles/monitoring.metricWriter", local.dagster_member]
    model_server_logs    = ["roles/logging.logWriter", local.model_server_member]
    model_server_metrics = ["roles/monitoring.metricWriter", local.model_server_member]
  }

  project = var.project_id
  role    = each.value[0]
  member  = each.value[1]
}
