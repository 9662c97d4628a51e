# batchinfer on Google Cloud (docs/deploy.md): one file per concern, this one holds what they share.

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

  # Every name derived from name_prefix and project_id, in one place, so that
  # tests/gcp/test_terraform.py can check each against the provider's limit with the longest
  # values the variables' validations accept (a service account id is at most 30 characters,
  # a bucket name at most 63, a Cloud Run service name at most 49).
  service_account_ids = {
    webserver    = "${local.name}-webserver"
    daemon       = "${local.name}-daemon"
    run_worker   = "${local.name}-run-worker"
    cli          = "${local.name}-cli"
    model_server = "${local.name}-model-server"
    build        = "${local.name}-build"
  }
  bucket_names = {
    dagster_logs = "${var.project_id}-${local.name}-dagster-logs"
    models       = "${var.project_id}-${local.name}-models"
    build_source = "${var.project_id}-${local.name}-build-source"
  }
  cloud_run_names = {
    webserver    = "${local.name}-dagster-webserver"
    daemon       = "${local.name}-dagster-daemon"
    run_worker   = "${local.name}-run-worker"
    cli          = "${local.name}-cli"
    model_server = "${local.name}-model-server"
  }

  # Google-managed service agents that act on our resources.
  pubsub_service_agent     = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  aiplatform_service_agent = "serviceAccount:service-${local.project_number}@gcp-sa-aiplatform.iam.gserviceaccount.com"
  iap_service_agent        = "serviceAccount:service-${local.project_number}@gcp-sa-iap.iam.gserviceaccount.com"

  # BigQuery beside everything else unless bigquery_location says otherwise.
  bigquery_location    = coalesce(var.bigquery_location, var.region)
  bigquery_table_id    = "${var.project_id}.${google_bigquery_dataset.main["features"].dataset_id}.${google_bigquery_table.records.table_id}"
  predictions_table_id = "${var.project_id}.${google_bigquery_dataset.main["predictions"].dataset_id}.${google_bigquery_table.predictions.table_id}"
  registry_url         = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"

  # Where the Cloud SQL server CA certificate is mounted in every Dagster container; the
  # database URL and dagster.yaml (sslrootcert) name this path.
  cloudsql_ca_dir  = "/etc/batchinfer/cloudsql"
  cloudsql_ca_file = "${local.cloudsql_ca_dir}/server-ca.pem"
  # verify-ca: Cloud SQL's per-instance CA (GOOGLE_MANAGED_INTERNAL_CA) signs only this
  # instance's certificate, so checking the chain authenticates the server; its certificate
  # names the instance, not the private IP, so verify-full would always fail here.
  database_url_options = "sslmode=verify-ca&sslrootcert=${local.cloudsql_ca_file}"

  # What every Dagster container (webserver, daemon, run workers, CLI job) is told; secrets
  # come separately.
  batchinfer_env = {
    BATCHINFER_QUEUE                           = "pubsub"
    BATCHINFER_PUBSUB_PROJECT                  = var.project_id
    BATCHINFER_PUBSUB_TOPIC                    = google_pubsub_topic.requests.name
    BATCHINFER_PUBSUB_SUBSCRIPTION             = google_pubsub_subscription.requests.name
    BATCHINFER_PUBSUB_DEAD_LETTER_TOPIC        = google_pubsub_topic.dead_letter.name
    BATCHINFER_PUBSUB_DEAD_LETTER_SUBSCRIPTION = google_pubsub_subscription.dead_letter.name
    BATCHINFER_ACK_DEADLINE_SECONDS            = tostring(var.pubsub_ack_deadline_seconds)
    BATCHINFER_FEATURE_STORE                   = "vertex"
    BATCHINFER_VERTEX_PROJECT                  = var.project_id
    BATCHINFER_VERTEX_REGION                   = var.region
    BATCHINFER_VERTEX_ONLINE_STORE             = google_vertex_ai_feature_online_store.records.name
    BATCHINFER_VERTEX_FEATURE_VIEW             = google_vertex_ai_feature_online_store_featureview.records.name
    BATCHINFER_VERTEX_BIGQUERY_TABLE           = local.bigquery_table_id
    BATCHINFER_PREDICTIONS_BIGQUERY_TABLE      = local.predictions_table_id
    # A Vertex endpoint authenticates with the account's access token; Cloud Run with an ID token.
    BATCHINFER_MODEL_URL  = coalesce(var.model_url, google_cloud_run_v2_service.model_server.uri)
    BATCHINFER_MODEL_AUTH = var.model_url == null ? "google-id-token" : "none"
    BATCHINFER_LABELS     = join(",", var.labels_to_predict)
  }
  # Scale knobs, set only when given: left unset, the code's own default applies (one
  # declaration of each default: batchinfer_dagster/settings.py).
  batchinfer_tuning_env = var.sensor_max_pull == null ? {} : {
    BATCHINFER_MAX_PULL = tostring(var.sensor_max_pull)
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

  # The image's dagster.yaml names the run-worker job literally (CloudRunRunLauncher takes no
  # environment variable there): the job Terraform creates must be that one.
  dagster_yaml                = yamldecode(file("${path.module}/../deploy/dagster.yaml"))
  dagster_yaml_run_worker_job = local.dagster_yaml.run_launcher.config.job_name_by_code_location.batchinfer_dagster

  # Secret environment: variable name -> Secret Manager secret id.
  dagster_secret_env = {
    BATCHINFER_DATABASE_URL = google_secret_manager_secret.database_url.secret_id
    DAGSTER_PG_PASSWORD     = google_secret_manager_secret.db_password.secret_id
  }
}
