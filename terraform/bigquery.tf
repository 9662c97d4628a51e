# The feature source table (design §1): one row per record, replaced by each import.

resource "google_bigquery_dataset" "features" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id                 = replace("${local.name}_features", "-", "_")
  location                   = var.bigquery_location
  description                = "batchinfer: records imported from the app database, the source of the Vertex AI FeatureView."
  delete_contents_on_destroy = false

  depends_on = [google_project_service.enabled]
}

resource "google_bigquery_table" "records" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id          = google_bigquery_dataset.features.dataset_id
  table_id            = "records"
  deletion_protection = var.deletion_protection
  description         = "One row per data point: entity_id (the record id), text, feature_timestamp."

  clustering = ["entity_id"]

  schema = jsonencode([
    { name = "entity_id", type = "STRING", mode = "REQUIRED", description = "Record id (data_points.id) as a string." },
    { name = "text", type = "STRING", mode = "REQUIRED", description = "The text to classify." },
    { name = "feature_timestamp", type = "TIMESTAMP", mode = "REQUIRED", description = "When the import wrote the row." },
  ])
}

# The import (run workers' feature_store asset, the CLI's import-data) loads the table (load
# jobs, roles/bigquery.jobUser in iam.tf) and reads it back.
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
