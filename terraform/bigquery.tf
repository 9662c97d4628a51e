# The feature source table (design §1): one row per record. An incremental import loads the
# changed records into a staging table of its own and MERGEs it into the source table (one row
# per entity id, as Vertex AI requires of a table source); a full import replaces the rows.
# Both datasets are in one location (a MERGE reads both), by default the deployment's region.

resource "google_bigquery_dataset" "features" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id                 = replace("${local.name}_features", "-", "_")
  location                   = local.bigquery_location
  description                = "batchinfer: records imported from the app database, the source of the Vertex AI FeatureView."
  delete_contents_on_destroy = false

  depends_on = [google_project_service.enabled]
}

resource "google_bigquery_table" "records" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id          = google_bigquery_dataset.features.dataset_id
  table_id            = "records"
  deletion_protection = var.deletion_protection
  description         = "One row per data point: entity_id (the record id), text, feature_timestamp (its updated_at)."

  clustering = ["entity_id"]

  schema = jsonencode([
    { name = "entity_id", type = "STRING", mode = "REQUIRED", description = "Record id (data_points.id) as a string." },
    { name = "text", type = "STRING", mode = "REQUIRED", description = "The text to classify." },
    { name = "feature_timestamp", type = "TIMESTAMP", mode = "REQUIRED", description = "When the import wrote the row." },
  ])
}

# The imports' staging tables: one per import, named by the import, deleted after its MERGE;
# the default expiration drops what a crashed import left. The client finds this dataset by
# the source dataset's id + "_staging" (STAGING_DATASET_SUFFIX in vertex_feature_store.py).
resource "google_bigquery_dataset" "staging" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id                  = "${google_bigquery_dataset.features.dataset_id}_staging"
  location                    = local.bigquery_location
  description                 = "batchinfer: one staging table per feature import, merged into ${google_bigquery_table.records.table_id} and then deleted."
  default_table_expiration_ms = 86400000
  delete_contents_on_destroy  = true
}

# The import (run workers' features asset, the CLI's import-data) creates, loads, reads and
# deletes its staging table, MERGEs it into the source table (jobs: roles/bigquery.jobUser in
# iam.tf) and counts the source table's records.
resource "google_bigquery_dataset_iam_member" "staging_editors" {
  for_each = toset(["run_worker", "cli"])

  dataset_id = google_bigquery_dataset.staging.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members[each.key]
}

resource "google_bigquery_table_iam_member" "editors" {
  for_each = toset(["run_worker", "cli"])

  dataset_id = google_bigquery_dataset.features.dataset_id
  table_id   = google_bigquery_table.records.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members[each.key]
}

# The FeatureView sync reads the table as the Vertex AI service agent.
resource "google_bigquery_table_iam_member" "vertex_viewer" {
  dataset_id = google_bigquery_dataset.features.dataset_id
  table_id   = google_bigquery_table.records.table_id
  role       = "roles/bigquery.dataViewer"
  member     = local.aiplatform_service_agent

  depends_on = [google_vertex_ai_feature_online_store.records]
}
