# batchinfer on Google Cloud (design §8): one file per concern, this one holds what they share.

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  name           = var.name_prefix
  project_number = data.google_project.this.number

  # Google-managed service agents that act on our resources.
  pubsub_service_agent     = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  aiplatform_service_agent = "serviceAccount:service-${local.project_number}@gcp-sa-aiplatform.iam.gserviceaccount.com"

  bigquery_table_id = "${var.project_id}.${google_bigquery_dataset.features.dataset_id}.${google_bigquery_table.records.table_id}"
  registry_url      = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"

  # What every Dagster container (webserver, daemon, CLI job) is told; secrets come separately.
  batchinfer_env = {
    BATCHINFER_QUEUE                           = "pubsub"
    BATCHINFER_PUBSUB_PROJECT                  = var.project_id
    BATCHINFER_PUBSUB_TOPIC                    = google_pubsub_topic.requests.name
    BATCHINFER_PUBSUB_SUBSCRIPTION             = google_pubsub_subscription.requests.name
    BATCHINFER_PUBSUB_DEAD_LETTER_TOPIC        = google_pubsub_topic.dead_letter.name
    BATCHINFER_PUBSUB_DEAD_LETTER_SUBSCRIPTION = google_pubsub_subscription.dead_letter.name
    BATCHINFER_FEATURE_STORE                   = "vertex"
    BATCHINFER_VERTEX_PROJECT                  = var.project_id
    BATCHINFER_VERTEX_REGION                   = var.region
    BATCHINFER_VERTEX_ONLINE_STORE             = google_vertex_ai_feature_online_store.records.name
    BATCHINFER_VERTEX_FEATURE_VIEW             = google_vertex_ai_feature_online_store_featureview.records.name
    BATCHINFER_VERTEX_BIGQUERY_TABLE           = local.bigquery_table_id
    # A Vertex endpoint authenticates with the account's access token; Cloud Run with an ID token.
    BATCHINFER_MODEL_URL  = coalesce(var.model_url, google_cloud_run_v2_service.model_server.uri)
    BATCHINFER_MODEL_AUTH = var.model_url == null ? "google-id-token" : "none"
    BATCHINFER_LABELS     = join(",", var.labels_to_predict)
  }

  dagster_pg_env = {
    DAGSTER_PG_HOST             = google_sql_database_instance.main.private_ip_address
    DAGSTER_PG_PORT             = "5432"
    DAGSTER_PG_USER             = google_sql_user.app.name
    DAGSTER_PG_DB               = google_sql_database.dagster.name
    DAGSTER_COMPUTE_LOGS_BUCKET = google_storage_bucket.dagster_logs.name
    GOOGLE_CLOUD_PROJECT        = var.project_id
    GOOGLE_CLOUD_REGION         = var.region
  }

  # Secret environment: variable name -> Secret Manager secret id.
  dagster_secret_env = {
    BATCHINFER_DATABASE_URL = google_secret_manager_secret.database_url.secret_id
    DAGSTER_PG_PASSWORD     = google_secret_manager_secret.db_password.secret_id
  }
}
