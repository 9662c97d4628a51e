# One service account per workload, each with only what that workload calls. Grants sit on the
# resource where the service offers resource-level IAM (topics, subscriptions, tables, secrets,
# buckets, Cloud Run services and jobs, service accounts); project-level grants are only those
# with no resource to hold them (writing logs and metrics, running BigQuery jobs) and Vertex AI
# Feature Store, whose FeatureView IAM resources the GA provider lacks (google-beta only).
#
#   webserver:    Dagster UI. Reads Dagster's storage (database secret) and run logs.
#   daemon:       sensors (pulls and acks requests), run queue, run monitoring; starts each run
#                 as an execution of the run-worker job (with overrides) acting as run-worker.
#   run_worker:   executes runs: reads features (Vertex AI), calls the model server, loads the
#                 BigQuery table and syncs the FeatureView (the feature_store asset), writes logs.
#   cli:          `batchinfer` and `dagster` commands in the VPC: publishes requests, reads dead
#                 letters, loads BigQuery and syncs the FeatureView (import-data), migrates.
#   model_server: serves predictions; reads the model from its bucket.
#   build:        Cloud Build: reads the uploaded source, pushes images, writes build logs.

resource "google_service_account" "workload" {
  for_each = local.service_account_ids

  account_id   = each.value
  display_name = "batchinfer ${replace(each.key, "_", " ")}"

  depends_on = [google_project_service.enabled]
}

locals {
  members       = { for key, account in google_service_account.workload : key => "serviceAccount:${account.email}" }
  dagster_roles = toset(["webserver", "daemon", "run_worker", "cli"])

  # Project-level roles: (workload, role) pairs.
  project_roles = merge(
    { for pair in setproduct(keys(local.service_account_ids), ["roles/logging.logWriter"]) : "${pair[0]} ${pair[1]}" => pair },
    { for pair in setproduct(["webserver", "daemon", "run_worker", "cli", "model_server"], ["roles/monitoring.metricWriter"]) : "${pair[0]} ${pair[1]}" => pair },
    { for key in ["run_worker", "cli"] : "${key} roles/bigquery.jobUser" => [key, "roles/bigquery.jobUser"] },
    { for key in ["run_worker", "cli"] : "${key} feature store" => [key, google_project_iam_custom_role.feature_store_user.id] },
  )
}

resource "google_project_iam_member" "workload" {
  for_each = local.project_roles

  project = var.project_id
  role    = each.value[1]
  member  = local.members[each.value[0]]
}

# Vertex AI Feature Store: exactly the calls the code makes (FetchFeatureValues, SyncFeatureView,
# GetFeatureViewSync, GetFeatureView, GetFeatureOnlineStore) instead of Vertex AI User.
resource "google_project_iam_custom_role" "feature_store_user" {
  role_id     = replace("${local.name}_feature_store_user", "-", "_")
  title       = "batchinfer Feature Store user"
  description = "Fetch feature values and sync the batchinfer FeatureView."
  permissions = [
    "aiplatform.featureOnlineStores.get",
    "aiplatform.featureViews.get",
    "aiplatform.featureViews.fetchFeatureValues",
    "aiplatform.featureViews.sync",
    "aiplatform.featureViewSyncs.get",
  ]

  depends_on = [google_project_service.enabled]
}

# The daemon starts run-worker executions that run as the run-worker account.
resource "google_service_account_iam_member" "daemon_acts_as_run_worker" {
  service_account_id = google_service_account.workload["run_worker"].name
  role               = "roles/iam.serviceAccountUser"
  member             = local.members.daemon
}
