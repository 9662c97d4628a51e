# Vertex AI Feature Store (the new one, not the legacy featurestore): an Optimized online store
# and a FeatureView synced from the BigQuery table.

resource "google_vertex_ai_feature_online_store" "records" {
  name   = replace("${local.name}_records", "-", "_")
  region = var.region
  # Destroying the store also deletes what is left in it (teardown must complete).
  force_destroy = !var.deletion_protection

  optimized {}

  depends_on = [google_project_service.enabled]
}

resource "google_vertex_ai_feature_online_store_featureview" "records" {
  name                 = "records"
  region               = var.region
  feature_online_store = google_vertex_ai_feature_online_store.records.name

  big_query_source {
    uri               = "bq://${local.bigquery_table_id}"
    entity_id_columns = ["entity_id"]
  }

  # `batchinfer import-data` syncs after every load and waits for it; a cron adds a scheduled
  # sync on top for loaders that write the table directly.
  dynamic "sync_config" {
    for_each = var.feature_view_sync_cron == null ? [] : [var.feature_view_sync_cron]
    content {
      cron = sync_config.value
    }
  }

  depends_on = [google_bigquery_table_iam_member.vertex_viewer]
}

# Who may fetch and sync: the custom roles feature_store_reader and _syncer in iam.tf.
