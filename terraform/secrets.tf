# The database password, alone (DAGSTER_PG_PASSWORD) and inside the app's URL
# (BATCHINFER_DATABASE_URL); Cloud Run injects both as secret environment variables.

resource "google_secret_manager_secret" "db_password" {
  secret_id = "${local.name}-db-password"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "db_password" {
  secret      = google_secret_manager_secret.db_password.id
  secret_data = random_password.db.result
}

resource "google_secret_manager_secret" "database_url" {
  secret_id = "${local.name}-database-url"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "database_url" {
  secret      = google_secret_manager_secret.database_url.id
  secret_data = "postgresql+psycopg://${google_sql_user.app.name}:${random_password.db.result}@${google_sql_database_instance.main.private_ip_address}:5432/${google_sql_database.app.name}?sslmode=require"
}

resource "google_secret_manager_secret_iam_member" "dagster" {
  for_each = {
    db_password  = google_secret_manager_secret.db_password.id
    database_url = google_secret_manager_secret.database_url.id
  }

  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = local.dagster_member
}
