# BigQuery: the feature source table and the exported predictions, each in a dataset of its own,
# in one location (by default the deployment's region).

# The two datasets, each with a staging dataset beside it (same location: a MERGE reads both).
# Readers of the predictions get access to their dataset, nothing of the features.
locals {
  bigquery_datasets = {
    features = {
      description = "records imported from the app database, the source of the Vertex AI FeatureView"
      staged_by   = "feature import"
    }
    predictions = {
      description = "the predictions, exported from the app database after each batch"
      staged_by   = "prediction export"
    }
  }
  # The table each dataset's staging tables are merged into (named in the staging dataset's
  # description).
  bigquery_merged_tables = {
    features    = google_bigquery_table.records.table_id
    predictions = google_bigquery_table.predictions.table_id
  }
}

resource "google_bigquery_dataset" "main" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  for_each = local.bigquery_datasets

  dataset_id                 = replace("${local.name}_${each.key}", "-", "_")
  location                   = local.bigquery_location
  description                = "batchinfer: ${each.value.description}."
  delete_contents_on_destroy = false

  depends_on = [google_project_service.enabled]
}

moved {
  from = google_bigquery_dataset.features
  to   = google_bigquery_dataset.main["features"]
}

moved {
  from = google_bigquery_dataset.predictions
  to   = google_bigquery_dataset.main["predictions"]
}

# Each import's or export's staging tables: one per run of it, named by it, deleted after its
# MERGE; the default expiration drops what a crashed one left. The clients find this dataset
# by the target dataset's id + "_staging" (STAGING_DATASET_SUFFIX in clients/bigquery_jobs.py).
resource "google_bigquery_dataset" "staging" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  for_each = local.bigquery_datasets

  dataset_id                  = "${google_bigquery_dataset.main[each.key].dataset_id}_staging"
  location                    = local.bigquery_location
  description                 = "batchinfer: one staging table per ${each.value.staged_by}, merged into ${local.bigquery_merged_tables[each.key]} and then deleted."
  default_table_expiration_ms = 86400000
  delete_contents_on_destroy  = true
}

moved {
  from = google_bigquery_dataset.staging
  to   = google_bigquery_dataset.staging["features"]
}

moved {
  from = google_bigquery_dataset.predictions_staging
  to   = google_bigquery_dataset.staging["predictions"]
}

# The feature source table (design §1): one row per record. An incremental import loads the
# changed records into a staging table of its own and MERGEs it into the source table (one row
# per entity id, as Vertex AI requires of a table source); a full import replaces the rows.
resource "google_bigquery_table" "records" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id          = google_bigquery_dataset.main["features"].dataset_id
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

# The import (run workers' features asset, the CLI's import-data) creates, loads, reads and
# deletes its staging table, MERGEs it into the source table (jobs: roles/bigquery.jobUser in
# iam.tf) and counts the source table's records.
resource "google_bigquery_dataset_iam_member" "staging_editors" {
  for_each = toset(["run_worker", "cli"])

  dataset_id = google_bigquery_dataset.staging["features"].dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members[each.key]
}

resource "google_bigquery_table_iam_member" "editors" {
  for_each = toset(["run_worker", "cli"])

  dataset_id = google_bigquery_dataset.main["features"].dataset_id
  table_id   = google_bigquery_table.records.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members[each.key]
}

# The FeatureView sync reads the table as the Vertex AI service agent.
resource "google_bigquery_table_iam_member" "vertex_viewer" {
  dataset_id = google_bigquery_dataset.main["features"].dataset_id
  table_id   = google_bigquery_table.records.table_id
  role       = "roles/bigquery.dataViewer"
  member     = local.aiplatform_service_agent

  depends_on = [google_vertex_ai_feature_online_store.records]
}

# The predictions, exported by the bigquery_predictions asset (run workers): one row per record
# and prediction configuration, merged from a staging table of each export's own. The columns
# of PREDICTIONS_SCHEMA (batchinfer_dagster/clients/bigquery_predictions.py).
resource "google_bigquery_table" "predictions" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  dataset_id          = google_bigquery_dataset.main["predictions"].dataset_id
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

# The export (run workers) creates, loads and deletes its staging table and MERGEs it into the
# predictions table (jobs: roles/bigquery.jobUser in iam.tf).
resource "google_bigquery_dataset_iam_member" "predictions_staging_editor" {
  dataset_id = google_bigquery_dataset.staging["predictions"].dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members.run_worker
}

resource "google_bigquery_table_iam_member" "predictions_editor" {
  dataset_id = google_bigquery_dataset.main["predictions"].dataset_id
  table_id   = google_bigquery_table.predictions.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.members.run_worker
}
