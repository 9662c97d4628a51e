# The GPU model server (design §6) on Cloud Run: one NVIDIA L4 per instance, scaling 0..N,
# reachable only from inside the VPC and only by the Dagster service account.

resource "google_cloud_run_v2_service" "model_server" {
  name                = "${local.name}-model-server"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  template {
    service_account                  = google_service_account.model_server.email
    max_instance_request_concurrency = var.model_server_concurrency
    timeout                          = "300s"
    # A zonal-redundant GPU reservation costs more and is not needed for batch work.
    gpu_zonal_redundancy_disabled = true

    scaling {
      min_instance_count = 0
      max_instance_count = var.model_server_max_instances
    }

    node_selector {
      accelerator = var.model_server_gpu
    }

    containers {
      image = var.model_server_image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu              = var.model_server_cpu
          memory           = var.model_server_memory
          "nvidia.com/gpu" = "1"
        }
        # GPU instances need CPU allocated outside requests too.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      env {
        name  = "MODEL_BACKEND"
        value = var.model_backend
      }
      env {
        name  = "MODEL_NAME_OR_PATH"
        value = var.model_name_or_path
      }
      # The image is built offline (HF_HUB_OFFLINE=1); a Hub model name is downloaded at startup.
      env {
        name  = "HF_HUB_OFFLINE"
        value = "0"
      }
      env {
        name  = "MODEL_DEVICE"
        value = "cuda"
      }
      env {
        name  = "MODEL_DEFAULT_LABELS"
        value = join(",", var.labels_to_predict)
      }

      # /health answers 503 until the model is loaded: no traffic before that.
      startup_probe {
        initial_delay_seconds = 10
        period_seconds        = 10
        timeout_seconds       = 5
        failure_threshold     = 60
        http_get {
          path = "/health"
          port = 8080
        }
      }

      liveness_probe {
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
        http_get {
          path = "/health"
          port = 8080
        }
      }
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_artifact_registry_repository_iam_member.readers,
  ]
}

resource "google_cloud_run_v2_service_iam_member" "model_server_invoker" {
  name     = google_cloud_run_v2_service.model_server.name
  location = google_cloud_run_v2_service.model_server.location
  role     = "roles/run.invoker"
  member   = local.dagster_member
}
