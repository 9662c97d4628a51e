# Dagster (design §8): the webserver (Cloud Run service, internal ingress), the daemon (a Cloud
# Run worker pool with exactly one instance: it runs the sensor and, with DefaultRunLauncher, the
# runs), and a Cloud Run job for the `batchinfer` CLI, which must run inside the VPC because
# the database has no public IP. All three use the Dagster image and the dagster account.
#
# The daemon is a worker pool, not a service or a VM: it serves no HTTP, must never scale to
# zero nor to two (two daemons would evaluate every sensor twice), and a worker pool gives that
# with the same image, secrets and VPC egress as the webserver, with no OS to patch.

resource "google_storage_bucket" "dagster_logs" {
  #checkov:skip=CKV_GCP_62:usage logs would need a second bucket for a bucket that holds only logs; Cloud Audit Logs record access
  name                        = "${var.project_id}-${local.name}-dagster-logs"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = var.compute_log_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket_iam_member" "dagster_logs" {
  bucket = google_storage_bucket.dagster_logs.name
  role   = "roles/storage.objectUser"
  member = local.dagster_member
}

locals {
  dagster_plain_env = merge(local.batchinfer_env, local.dagster_pg_env)
}

resource "google_cloud_run_v2_service" "dagster_webserver" {
  name                = "${local.name}-dagster-webserver"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  template {
    service_account = google_service_account.dagster.email

    scaling {
      min_instance_count = 0
      max_instance_count = 2
    }

    vpc_access {
      network_interfaces {
        network    = google_compute_network.main.id
        subnetwork = google_compute_subnetwork.main.id
      }
      egress = "ALL_TRAFFIC"
    }

    containers {
      image = var.dagster_image
      # The image's default command is the webserver on port 3000.

      ports {
        container_port = 3000
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "2Gi"
        }
      }

      dynamic "env" {
        for_each = local.dagster_plain_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.dagster_secret_env
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      startup_probe {
        period_seconds    = 5
        failure_threshold = 24
        http_get {
          path = "/server_info"
          port = 3000
        }
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.dagster,
    google_secret_manager_secret_version.db_password,
    google_secret_manager_secret_version.database_url,
    google_artifact_registry_repository_iam_member.readers,
  ]
}

resource "google_cloud_run_v2_service_iam_member" "dagster_ui" {
  for_each = toset(var.dagster_ui_members)

  name     = google_cloud_run_v2_service.dagster_webserver.name
  location = google_cloud_run_v2_service.dagster_webserver.location
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_v2_worker_pool" "dagster_daemon" {
  name                = "${local.name}-dagster-daemon"
  location            = var.region
  deletion_protection = false

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = 1
  }

  template {
    service_account = google_service_account.dagster.email

    vpc_access {
      network_interfaces {
        network    = google_compute_network.main.id
        subnetwork = google_compute_subnetwork.main.id
      }
      egress = "ALL_TRAFFIC"
    }

    containers {
      image   = var.dagster_image
      command = ["dagster-daemon"]
      args    = ["run", "-w", "/opt/dagster/dagster_home/workspace.yaml"]

      resources {
        limits = {
          cpu    = var.dagster_daemon_cpu
          memory = var.dagster_daemon_memory
        }
      }

      dynamic "env" {
        for_each = local.dagster_plain_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.dagster_secret_env
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.dagster,
    google_secret_manager_secret_version.db_password,
    google_secret_manager_secret_version.database_url,
    google_artifact_registry_repository_iam_member.readers,
  ]
}

# `gcloud run jobs execute <job> --args=db,upgrade --wait` runs one CLI command in the VPC.
resource "google_cloud_run_v2_job" "cli" {
  name                = "${local.name}-cli"
  location            = var.region
  deletion_protection = false

  template {
    task_count = 1

    template {
      service_account = google_service_account.dagster.email
      max_retries     = 0
      timeout         = "3600s"

      vpc_access {
        network_interfaces {
          network    = google_compute_network.main.id
          subnetwork = google_compute_subnetwork.main.id
        }
        egress = "ALL_TRAFFIC"
      }

      containers {
        image   = var.dagster_image
        command = ["batchinfer"]
        args    = ["status"]

        resources {
          limits = {
            cpu    = "1"
            memory = "2Gi"
          }
        }

        dynamic "env" {
          for_each = local.dagster_plain_env
          content {
            name  = env.key
            value = env.value
          }
        }

        dynamic "env" {
          for_each = local.dagster_secret_env
          content {
            name = env.key
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.dagster,
    google_secret_manager_secret_version.db_password,
    google_secret_manager_secret_version.database_url,
    google_artifact_registry_repository_iam_member.readers,
  ]
}
