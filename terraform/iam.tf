# One service account per workload, each with only what that workload calls. Grants sit on the
# resource where the service offers resource-level IAM (topics, subscriptions, tables, secrets,
# buckets, Cloud Run services and jobs, service accounts); project-level grants are only those
# with no resource to hold them (writing logs, running BigQuery jobs) and Vertex AI
# Feature Store, whose FeatureView IAM resources the GA provider lacks (google-beta only).
#
#   webserver:    Dagster UI. Reads Dagster's storage (database secret) and run logs.
#   daemon:       sensors (pulls and acks requests, reads back Pub/Sub's dead letters, looks up
#                 the requests waiting for features), run queue, run monitoring; starts each run
#                 as an execution of the run-worker job (with overrides) acting as run-worker.
#   run_worker:   executes runs: reads features (Vertex AI), calls the model server, loads the
#                 BigQuery table and syncs the FeatureView (the feature_store asset), writes logs.
#   cli:          `batchinfer` and `dagster` commands in the VPC: publishes requests (publish,
#                 predict, dead-letters replay), loads BigQuery and syncs the FeatureView
#                 (import-data), counts the BigQuery table (status), migrates. Dead letters it
#                 reads from the database, never from the dead-letter subscription.
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

  # Project-level roles of each workload, only those with no resource to hold them: writing
  # logs, running BigQuery jobs, and the Feature Store custom roles below (by their key).
  # tests/gcp/test_grants.py maps every code path of each workload to its Google API calls and
  # checks them against these and the resource-level grants, both ways (no call without a
  # grant, no grant without a call).
  #   daemon:     the sensor looks up the requests waiting for features (feature_store_reader);
  #   run_worker: the predictions asset fetches, the features asset loads BigQuery and syncs,
  #               bigquery_predictions loads and merges the predictions table;
  #   cli:        import-data loads BigQuery and syncs, status counts the BigQuery table.
  project_roles = {
    webserver    = ["roles/logging.logWriter"]
    daemon       = ["roles/logging.logWriter", "feature_store_reader"]
    run_worker   = ["roles/logging.logWriter", "roles/bigquery.jobUser", "feature_store_reader", "feature_store_syncer"]
    cli          = ["roles/logging.logWriter", "roles/bigquery.jobUser", "feature_store_syncer"]
    model_server = ["roles/logging.logWriter"]
    build        = ["roles/logging.logWriter"]
  }
  # "<workload> <role or custom role key>" => [workload, role]: keys known at plan time.
  project_role_pairs = merge([
    for key, roles in local.project_roles : { for role in roles : "${key} ${role}" => [key, role] }
  ]...)

  # Vertex AI Feature Store: exactly the calls the code makes, instead of Vertex AI User.
  #   reader: FetchFeatureValues, and the look-ups before the first fetch (GetFeatureView,
  #           GetFeatureOnlineStore for the serving endpoint);
  #   syncer: SyncFeatureView and GetFeatureViewSync (the import waits for its sync).
  feature_store_roles = {
    feature_store_reader = [
      "aiplatform.featureOnlineStores.get",
      "aiplatform.featureViews.get",
      "aiplatform.featureViews.fetchFeatureValues",
    ]
    feature_store_syncer = [
      "aiplatform.featureViews.sync",
      "aiplatform.featureViewSyncs.get",
    ]
  }
}

resource "google_project_iam_member" "workload" {
  for_each = local.project_role_pairs

  project = var.project_id
  role    = contains(keys(local.feature_store_roles), each.value[1]) ? google_project_iam_custom_role.feature_store[each.value[1]].id : each.value[1]
  member  = local.members[each.value[0]]
}

resource "google_project_iam_custom_role" "feature_store" {
  for_each = local.feature_store_roles

  role_id     = replace("${local.name}_${each.key}", "-", "_")
  title       = "batchinfer ${replace(each.key, "_", " ")}"
  description = "batchinfer: ${join(", ", each.value)}."
  permissions = each.value

  depends_on = [google_project_service.enabled]
}

# The daemon starts run-worker executions that run as the run-worker account.
resource "google_service_account_iam_member" "daemon_acts_as_run_worker" {
  service_account_id = google_service_account.workload["run_worker"].name
  role               = "roles/iam.serviceAccountUser"
  member             = local.members.daemon
}
