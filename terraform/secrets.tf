# The database password, alone (DAGSTER_PG_PASSWORD) and inside the app's URL
# (BATCHINFER_DATABASE_URL); Cloud Run injects both as secret environment variables. The Cloud
# SQL server CA certificate is not secret, but a secret is how Cloud Run mounts a file: every
# Dagster container verifies the server against it (sslmode=verify-ca).
#
# The generated password is also in the Terraform state: backend.tf makes the state remote
# (a Cloud Storage bucket only the deployers can read).

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
  secret_data = "postgresql+psycopg://${google_sql_user.app.name}:${random_password.db.result}@${google_sql_database_instance.main.private_ip_address}:5432/${google_sql_database.app.name}?${local.database_url_options}"
}

resource "google_secret_manager_secret" "cloudsql_ca" {
  secret_id = "${local.name}-cloudsql-server-ca"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_version" "cloudsql_ca" {
  secret      = google_secret_manager_secret.cloudsql_ca.id
  secret_data = google_sql_database_instance.main.server_ca_cert[0].cert
}

locals {
  # Every Dagster workload reads every one of these.
  dagster_secrets = {
    db_password  = google_secret_manager_secret.db_password.id
    database_url = google_secret_manager_secret.database_url.id
    cloudsql_ca  = google_secret_manager_secret.cloudsql_ca.id
  }
}

resource "google_secret_manager_secret_iam_member" "dagster" {
  for_each = {
    for pair in setproduct(keys(local.dagster_secrets), tolist(local.dagster_roles)) :
    "${pair[0]} ${pair[1]}" => { secret = local.dagster_secrets[pair[0]], member = local.members[pair[1]] }
  }

  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value.member
}
