output "batchinfer_env" {
  description = "Every BATCHINFER_* value of this deployment (the database URL without its password: the full URL is in the secret database_url_secret_id)."
  value = merge(local.batchinfer_env, {
    BATCHINFER_DATABASE_URL = "postgresql+psycopg://${google_sql_user.app.name}@${google_sql_database_instance.main.private_ip_address}:5432/${google_sql_database.app.name}?sslmode=require"
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

output "model_server_url" {
  description = "URL of the GPU model server on Cloud Run (BATCHINFER_MODEL_URL); only the Dagster account may invoke it."
  value       = google_cloud_run_v2_service.model_server.uri
}

output "dagster_webserver_url" {
  description = "URL of the Dagster UI (internal ingress: reachable from inside the VPC)."
  value       = google_cloud_run_v2_service.dagster_webserver.uri
}

output "cli_job" {
  description = "Cloud Run job that runs one `batchinfer` command inside the VPC: gcloud run jobs execute <cli_job> --region <region> --args=db,upgrade --wait."
  value       = google_cloud_run_v2_job.cli.name
}

output "dagster_service_account" {
  description = "Service account of the webserver, daemon and CLI job."
  value       = google_service_account.dagster.email
}

output "sql_instance" {
  description = "Cloud SQL instance name."
  value       = google_sql_database_instance.main.name
}
