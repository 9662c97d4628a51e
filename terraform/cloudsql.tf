# PostgreSQL 16 for the app tables and Dagster's storage: private IP only, encrypted
# connections only (clients verify the server against its per-instance CA: secrets.tf), daily
# backups with point-in-time recovery.

resource "google_sql_database_instance" "main" {
  #checkov:skip=CKV_GCP_6:ssl_mode ENCRYPTED_ONLY refuses every unencrypted connection; client certificates would have to be issued to every container, and only the private VPC can reach the instance at all
  #checkov:skip=CKV_GCP_79:we fix PostgreSQL 16 (same major version as tests and Alembic migrations); upgrade deliberately, not by a linter
  #checkov:skip=CKV2_GCP_13:log_duration logs a line per statement (every sensor tick); Query Insights records latencies instead
  name                = "${local.name}-pg"
  database_version    = "POSTGRES_16"
  region              = var.region
  deletion_protection = var.deletion_protection

  settings {
    tier                        = var.db_tier
    edition                     = "ENTERPRISE"
    availability_type           = var.db_availability_type
    disk_size                   = var.db_disk_size_gb
    disk_autoresize             = true
    deletion_protection_enabled = var.deletion_protection
    user_labels                 = var.labels

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.main.id
      ssl_mode        = "ENCRYPTED_ONLY"
      # One CA per instance: verify-ca then proves the server is this instance.
      server_ca_mode = "GOOGLE_MANAGED_INTERNAL_CA"
      # BigQuery federated queries and other Google services may still reach the private IP.
      enable_private_path_for_google_cloud_services = true
    }

    backup_configuration {
      enabled                        = true
      start_time                     = var.db_backup_start_time
      point_in_time_recovery_enabled = true
      transaction_log_retention_days = var.db_log_retention_days

      backup_retention_settings {
        retained_backups = var.db_backup_retention_count
        retention_unit   = "COUNT"
      }
    }

    maintenance_window {
      day          = 7
      hour         = 3
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled  = true
      record_application_tags = true
      record_client_address   = false
    }

    # Connection, lock and schema-change logging for audits and incident analysis; other
    # statements are not logged (they carry the records' text).
    # Sized for the most model replicas this deployment allows, model_server_max_instances_limit
    # (terraform/dagster.tf, local.dagster_limits): changing this flag restarts the instance.
    database_flags {
      name  = "max_connections"
      value = tostring(local.dagster_limits.db_max_connections)
    }
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "pgaudit.log"
      value = "ddl,role"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

# ABANDON: on destroy, PostgreSQL refuses to drop a database with open connections or a role
# that owns objects; deleting the instance removes both anyway.
resource "google_sql_database" "app" {
  name            = var.app_database_name
  instance        = google_sql_database_instance.main.name
  deletion_policy = "ABANDON"
}

resource "google_sql_database" "dagster" {
  name            = var.dagster_database_name
  instance        = google_sql_database_instance.main.name
  deletion_policy = "ABANDON"
}

# Letters and digits only: dagster-postgres puts the password into a URL without escaping "/".
resource "random_password" "db" {
  length  = 32
  special = false
}

resource "google_sql_user" "app" {
  name            = var.db_user
  instance        = google_sql_database_instance.main.name
  password        = random_password.db.result
  deletion_policy = "ABANDON"
}
