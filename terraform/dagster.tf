# Dagster (docs/deploy.md), all from the Dagster image, each with its own service account (iam.tf):
#   webserver   Cloud Run service behind the HTTPS load balancer with IAP (ui.tf);
#   daemon      Cloud Run worker pool with exactly one instance: sensors, run queue, run
#               monitoring. It serves no HTTP and must never scale to zero nor to two (two
#               daemons would evaluate every sensor twice);
#   run worker  Cloud Run job: CloudRunRunLauncher (dagster.yaml) starts one execution per run,
#               overriding its arguments with `dagster api execute_run ...`;
#   cli         Cloud Run job for `batchinfer` and `dagster` commands inside the VPC (the
#               database has no public IP): `--args` replaces the whole command.

resource "google_storage_bucket" "dagster_logs" {
  #checkov:skip=CKV_GCP_62:usage logs would need a second bucket for a bucket that holds only logs; Cloud Audit Logs record access
  name                        = local.bucket_names.dagster_logs
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Versioned: destroy must delete every version too, or it stops at a non-empty bucket.
  force_destroy = !var.deletion_protection

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

# Run workers and the daemon write run and step logs; the webserver shows them.
resource "google_storage_bucket_iam_member" "dagster_logs" {
  for_each = {
    webserver  = "roles/storage.objectViewer"
    daemon     = "roles/storage.objectUser"
    run_worker = "roles/storage.objectUser"
  }

  bucket = google_storage_bucket.dagster_logs.name
  role   = each.value
  member = local.members[each.key]
}

locals {
  dagster_plain_env = merge(local.batchinfer_env, local.batchinfer_tuning_env, local.dagster_pg_env)

  # dagster.yaml's limits by formula (tests/gcp/test_dagster_instance.py checks the file holds
  # these values for the defaults; other sizes: `dagster instance concurrency set` through the
  # CLI job, and a new image with dagster.yaml's max_concurrent_runs):
  #   model_server pool   = model_server_max_instances x 2 runs per GPU (one run's request is
  #                         computed while the next run's is fetched and sent);
  #   max_concurrent_runs = model_server pool + 3 other runs (import, reconcile, retention).
  # Memory bounds neither: each run has its own container (run_worker_memory), and the daemon
  # holds only the daemon and one code server.
  #   Cloud SQL max_connections = processes x 13 + 20 reserved (Cloud SQL's own, superuser),
  #     13 per process: the app's pool (pool_size 5 + max_overflow 5, batchinfer_dagster/db.py)
  #     and Dagster's run, event log and schedule storage (one connection each, NullPool);
  #     processes: 2 per run (run worker + its step process), 2 for the daemon (daemon + code
  #     server), 2 per webserver instance (at most 2), 1 CLI execution. Sized for
  #     model_server_max_instances_limit, not model_server_max_instances: the flag restarts
  #     Cloud SQL when it changes, and scaling the model server must not.
  dagster_limits = {
    model_server_pool   = var.model_server_max_instances * 2
    max_concurrent_runs = var.model_server_max_instances * 2 + 3
    db_max_connections  = ((var.model_server_max_instances_limit * 2 + 3) * 2 + 2 + local.webserver_size.instances * 2 + 1) * 13 + 20
  }

  # Every Dagster container first waits for the database (Direct VPC egress may have no
  # connectivity for a minute after an instance starts; batchinfer_dagster/wait_for_database.py),
  # then becomes its args: the launcher and deploy/run.sh override only the args.
  wait_for_database = ["python", "-m", "batchinfer_dagster.wait_for_database", "--timeout", tostring(var.database_wait_seconds), "--"]

  webserver_size = { instances = 2, cpu = "1", memory = "2Gi" }
  cli_size       = { instances = 1, cpu = "1", memory = "2Gi" }
}

resource "google_cloud_run_v2_service" "dagster_webserver" {
  name     = local.cloud_run_names.webserver
  location = var.region
  # Only the load balancer (ui.tf), where Identity-Aware Proxy signs users in.
  ingress             = "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"
  deletion_protection = false

  template {
    service_account = google_service_account.workload["webserver"].email

    scaling {
      min_instance_count = 0
      max_instance_count = local.webserver_size.instances
    }

    vpc_access {
      network_interfaces {
        network    = google_compute_network.main.id
        subnetwork = google_compute_subnetwork.main.id
      }
      egress = "ALL_TRAFFIC"
    }

    volumes {
      name = "cloudsql-ca"
      secret {
        secret = google_secret_manager_secret.cloudsql_ca.secret_id
        items {
          version = "latest"
          path    = basename(local.cloudsql_ca_file)
        }
      }
    }

    containers {
      image   = var.dagster_image
      command = local.wait_for_database
      # The image's default command: the webserver on port 3000.
      args = ["dagster-webserver", "--host", "0.0.0.0", "--port", "3000", "--workspace", "/opt/dagster/dagster_home/workspace.yaml"]

      ports {
        container_port = 3000
      }

      resources {
        limits = {
          cpu    = local.webserver_size.cpu
          memory = local.webserver_size.memory
        }
      }

      volume_mounts {
        name       = "cloudsql-ca"
        mount_path = local.cloudsql_ca_dir
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

      # 10 s x 24 = 240 s, Cloud Run's most for a startup probe: the database wait and the
      # code location's load.
      startup_probe {
        period_seconds    = 10
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
    google_secret_manager_secret_version.cloudsql_ca,
  ]
}

resource "google_cloud_run_v2_worker_pool" "dagster_daemon" {
  name                = local.cloud_run_names.daemon
  location            = var.region
  deletion_protection = false

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = 1
  }

  template {
    service_account = google_service_account.workload["daemon"].email

    vpc_access {
      network_interfaces {
        network    = google_compute_network.main.id
        subnetwork = google_compute_subnetwork.main.id
      }
      egress = "ALL_TRAFFIC"
    }

    volumes {
      name = "cloudsql-ca"
      secret {
        secret = google_secret_manager_secret.cloudsql_ca.secret_id
        items {
          version = "latest"
          path    = basename(local.cloudsql_ca_file)
        }
      }
    }

    containers {
      image   = var.dagster_image
      command = local.wait_for_database
      args    = ["dagster-daemon", "run", "-w", "/opt/dagster/dagster_home/workspace.yaml"]

      resources {
        limits = {
          cpu    = var.dagster_daemon_cpu
          memory = var.dagster_daemon_memory
        }
      }

      volume_mounts {
        name       = "cloudsql-ca"
        mount_path = local.cloudsql_ca_dir
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
    google_secret_manager_secret_version.cloudsql_ca,
    google_service_account_iam_member.daemon_acts_as_run_worker,
    google_cloud_run_v2_job_iam_member.daemon_runs_workers,
  ]
}

# One execution per Dagster run (CloudRunRunLauncher). The launcher overrides the arguments
# with `<the daemon's python> -m dagster api execute_run <run>` (so the worker must run the
# daemon's image) and the timeout with run_max_runtime_seconds; a task
# that dies is not retried by Cloud Run (max_retries 0): run monitoring sees the failed
# execution, fails the run, frees its pool slot, and Dagster's run retries start it again.
resource "google_cloud_run_v2_job" "run_worker" {
  name                = local.cloud_run_names.run_worker
  location            = var.region
  deletion_protection = false

  # dagster.yaml is in the image and Dagster reads no variable for these: what Terraform sizes
  # and what the image does must be the same numbers, or plan stops here.
  lifecycle {
    precondition {
      condition     = local.cloud_run_names.run_worker == local.dagster_yaml_run_worker_job
      error_message = "dagster.yaml's run_launcher names the run-worker job ${local.dagster_yaml_run_worker_job}, but this deployment's is ${local.cloud_run_names.run_worker}: set job_name_by_code_location.batchinfer_dagster in dagster.yaml to it and rebuild the Dagster image."
    }
    precondition {
      condition     = var.run_max_runtime_seconds == local.dagster_yaml.run_launcher.config.run_timeout && var.run_max_runtime_seconds == local.dagster_yaml.run_monitoring.max_runtime_seconds
      error_message = "run_max_runtime_seconds is ${var.run_max_runtime_seconds}, but dagster.yaml's run_launcher.config.run_timeout and run_monitoring.max_runtime_seconds are ${local.dagster_yaml.run_launcher.config.run_timeout} and ${local.dagster_yaml.run_monitoring.max_runtime_seconds}: set both to it and rebuild the Dagster image."
    }
    precondition {
      condition     = local.dagster_limits.max_concurrent_runs == local.dagster_yaml.concurrency.runs.max_concurrent_runs
      error_message = "model_server_max_instances ${var.model_server_max_instances} needs max_concurrent_runs ${local.dagster_limits.max_concurrent_runs} (output dagster_pool_limits), but dagster.yaml's concurrency.runs.max_concurrent_runs is ${local.dagster_yaml.concurrency.runs.max_concurrent_runs}: set it and rebuild the Dagster image (docs/deploy.md, Scaling)."
    }
  }

  template {
    task_count = 1

    template {
      service_account = google_service_account.workload["run_worker"].email
      max_retries     = 0
      timeout         = "${var.run_max_runtime_seconds}s"

      vpc_access {
        network_interfaces {
          network    = google_compute_network.main.id
          subnetwork = google_compute_subnetwork.main.id
        }
        egress = "ALL_TRAFFIC"
      }

      volumes {
        name = "cloudsql-ca"
        secret {
          secret = google_secret_manager_secret.cloudsql_ca.secret_id
          items {
            version = "latest"
            path    = basename(local.cloudsql_ca_file)
          }
        }
      }

      containers {
        image   = var.dagster_image
        command = local.wait_for_database
        args    = ["dagster", "api", "execute_run"]

        resources {
          limits = {
            cpu    = var.run_worker_cpu
            memory = var.run_worker_memory
          }
        }

        volume_mounts {
          name       = "cloudsql-ca"
          mount_path = local.cloudsql_ca_dir
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
    google_secret_manager_secret_version.cloudsql_ca,
  ]
}

# The daemon runs the job with overrides (arguments, timeout) and reads its executions (run
# monitoring); the webserver cancels executions when a run is terminated from the UI, its only
# Cloud Run call (the launcher's terminate: CancelExecution). No predefined role holds
# run.executions.cancel without run.jobs.run, so the webserver gets a custom role of just that.
resource "google_project_iam_custom_role" "run_canceller" {
  role_id     = replace("${local.name}_run_canceller", "-", "_")
  title       = "batchinfer run canceller"
  description = "batchinfer: run.executions.cancel (Dagster's run termination from the UI)."
  permissions = ["run.executions.cancel"]

  depends_on = [google_project_service.enabled]
}

resource "google_cloud_run_v2_job_iam_member" "daemon_runs_workers" {
  for_each = {
    daemon_executor  = ["daemon", "roles/run.jobsExecutorWithOverrides"]
    daemon_viewer    = ["daemon", "roles/run.viewer"]
    webserver_cancel = ["webserver", google_project_iam_custom_role.run_canceller.id]
  }

  name     = google_cloud_run_v2_job.run_worker.name
  location = google_cloud_run_v2_job.run_worker.location
  role     = each.value[1]
  member   = local.members[each.value[0]]
}

# `gcloud run jobs execute <job> --args=batchinfer,db,upgrade --wait`: the container's command
# only waits for the database, so --args is the whole command line, `batchinfer ...` or
# `dagster ...` alike.
resource "google_cloud_run_v2_job" "cli" {
  name                = local.cloud_run_names.cli
  location            = var.region
  deletion_protection = false

  template {
    task_count = 1

    template {
      service_account = google_service_account.workload["cli"].email
      max_retries     = 0
      timeout         = "3600s"

      vpc_access {
        network_interfaces {
          network    = google_compute_network.main.id
          subnetwork = google_compute_subnetwork.main.id
        }
        egress = "ALL_TRAFFIC"
      }

      volumes {
        name = "cloudsql-ca"
        secret {
          secret = google_secret_manager_secret.cloudsql_ca.secret_id
          items {
            version = "latest"
            path    = basename(local.cloudsql_ca_file)
          }
        }
      }

      containers {
        image   = var.dagster_image
        command = local.wait_for_database
        args    = ["batchinfer", "status"]

        resources {
          limits = {
            cpu    = local.cli_size.cpu
            memory = local.cli_size.memory
          }
        }

        volume_mounts {
          name       = "cloudsql-ca"
          mount_path = local.cloudsql_ca_dir
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
    google_secret_manager_secret_version.cloudsql_ca,
  ]
}
