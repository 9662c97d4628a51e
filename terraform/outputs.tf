output "batchinfer_env" {
  description = "Every BATCHINFER_* value of this deployment (the database URL without its password: the full URL is in the secret database_url_secret_id)."
  value = merge(local.batchinfer_env, local.batchinfer_tuning_env, {
    BATCHINFER_DATABASE_URL = "postgresql+psycopg://${google_sql_user.app.name}@${google_sql_database_instance.main.private_ip_address}:5432/${google_sql_database.app.name}?${local.database_url_options}"
  })
}

output "dagster_env" {
  description = "DAGSTER_PG_* and related variables of dagster.yaml (DAGSTER_PG_PASSWORD is in the secret db_password_secret_id)."
  value       = local.dagster_pg_env
}

output "database_url_secret_id" {
  description = "Secret Manager secret holding the full BATCHINFER_DATABASE_URL, password included."
  value       = google_secret_manager_secret.database_url.secret_id
}

output "db_password_secret_id" {
  description = "Secret Manager secret holding the PostgreSQL password (DAGSTER_PG_PASSWORD)."
  value       = google_secret_manager_secret.db_password.secret_id
}

output "registry_url" {
  description = "Artifact Registry prefix for the images: <registry_url>/dagster:TAG and <registry_url>/model-server:TAG."
  value       = local.registry_url
}

output "build_service_account" {
  description = "Service account Cloud Build runs as (gcloud builds submit --service-account)."
  value       = google_service_account.workload["build"].id
}

output "build_source_bucket" {
  description = "Bucket the build sources are uploaded to (gcloud builds submit --gcs-source-staging-dir)."
  value       = google_storage_bucket.build_source.name
}

output "models_bucket" {
  description = "Bucket mounted read-only at /models in the model server; upload the NLI model folder to gs://<models_bucket>/<model_gcs_path>/."
  value       = google_storage_bucket.models.name
}

output "model_server_url" {
  description = "URL of the GPU model server on Cloud Run (BATCHINFER_MODEL_URL); only the run workers may invoke it."
  value       = google_cloud_run_v2_service.model_server.uri
}

output "dagster_ui_url" {
  description = "The Dagster UI, behind Identity-Aware Proxy (its certificate is issued some minutes after the domain resolves to dagster_ui_ip)."
  value       = "https://${local.dagster_ui_domain}"
}

output "dagster_ui_ip" {
  description = "Address of the UI's load balancer: point dagster_ui_domain at it (an A record)."
  value       = google_compute_global_address.dagster_ui.address
}

output "cli_job" {
  description = "Cloud Run job that runs one command inside the VPC: gcloud run jobs execute <cli_job> --region <region> --args=batchinfer,db,upgrade --wait."
  value       = google_cloud_run_v2_job.cli.name
}

output "run_worker_job" {
  description = "Cloud Run job each Dagster run executes in (CloudRunRunLauncher)."
  value       = google_cloud_run_v2_job.run_worker.name
}

output "service_accounts" {
  description = "Service account of each workload (webserver, daemon, run_worker, cli, model_server, build)."
  value       = { for key, account in google_service_account.workload : key => account.email }
}

output "sql_instance" {
  description = "Cloud SQL instance name."
  value       = google_sql_database_instance.main.name
}

output "dagster_pool_limits" {
  description = "Limits of dagster.yaml sized from this deployment (see the formula there); set a pool with `dagster instance concurrency set model_server <n>` through the CLI job."
  value       = local.dagster_limits
}
