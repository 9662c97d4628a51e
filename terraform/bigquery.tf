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

# The predictions, exported by the bigquery_predictions asset (run workers): one row per record
# and prediction configuration, merged from a staging table of each export's own, so its own
# dataset beside the staging one (same location: a MERGE reads both). Readers of the
# predictions get access to this dataset, nothing of the features.
resource "google_bigquery_dataset" "predictions" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id                 = replace("${local.name}_predictions", "-", "_")
  location                   = local.bigquery_location
  description                = "batchinfer: the predictions, exported from the app database after each batch."
  delete_contents_on_destroy = false

  depends_on = [google_project_service.enabled]
}

# The columns of PREDICTIONS_SCHEMA (batchinfer_dagster/clients/bigquery_predictions.py).
resource "google_bigquery_table" "predictions" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id          = google_bigquery_dataset.predictions.dataset_id
  table_id            = "predictions"
  deletion_protection = var.deletion_protection
  description         = "One row per record and prediction configuration; is_current marks the prediction a reader shows."

  clustering = ["record_id", "configuration"]

  schema = jsonencode([
    { name = "record_id", type = "INT64", mode = "REQUIRED", description = "Record id (data_points.id)." },
    { name = "configuration", type = "STRING", mode = "REQUIRED", description = "Digest of the prediction configuration (model, labels, template, descriptions)." },
    { name = "model", type = "STRING", mode = "REQUIRED", description = "The model's name." },
    { name = "labels", type = "STRING", mode = "REPEATED", description = "Candidate labels, as the model ranked them." },
    { name = "scores", type = "FLOAT64", mode = "REPEATED", description = "The score of each label, in the same order." },
    { name = "top_label", type = "STRING", mode = "NULLABLE", description = "The label with the highest score." },
    { name = "top_score", type = "FLOAT64", mode = "NULLABLE", description = "Its score." },
    { name = "text_digest", type = "STRING", mode = "NULLABLE", description = "SHA-256 of the text classified; NULL for predictions older than receipts." },
    { name = "predicted_at", type = "TIMESTAMP", mode = "REQUIRED", description = "When the prediction was written." },
    { name = "is_current", type = "BOOL", mode = "REQUIRED", description = "Whether it is its record's current prediction." },
    { name = "change_seq", type = "INT64", mode = "REQUIRED", description = "The app database's change number of the row (the export's order)." },
  ])
}

# Each export's staging table, deleted after its MERGE; the default expiration drops what a
# crashed export left. Found by the predictions dataset's id + "_staging"
# (STAGING_DATASET_SUFFIX in bigquery_predictions.py).
resource "google_bigquery_dataset" "predictions_staging" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id                  = "${google_bigquery_dataset.predictions.dataset_id}_staging"
  location                    = local.bigquery_location
  description                 = "batchinfer: one staging table per prediction export, merged into ${google_bigquery_table.predictions.table_id} and then deleted."
  default_table_expiration_ms = 86400000
  delete_contents_on_destroy  = true
}

# The export (run workers) creates, loads and deletes its staging table and MERGEs it into the
# predictions table (jobs: roles/bigquery.jobUser in iam.tf).
resource "google_bigquery_dataset_iam_member" "predictions_staging_editor" {
  dataset_id = google_bigquery_dataset.predictions_staging.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members.run_worker
}

resource "google_bigquery_table_iam_member" "predictions_editor" {
  dataset_id = google_bigquery_dataset.predictions.dataset_id
  table_id   = google_bigquery_table.predictions.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members.run_worker
}
