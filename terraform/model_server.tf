# The GPU model server (docs/model-server.md) on Cloud Run: one NVIDIA L4 per instance, scaling 0..N,
# reachable only from inside the VPC and only by the run workers' service account.
#
# The model never comes from the Hugging Face Hub at start-up (HF_HUB_OFFLINE=1): the NLI model
# is read from the models bucket, mounted read-only with Cloud Storage FUSE; the embedding model
# is baked into the image. deploy/05-upload-model.sh puts a model into the bucket.

resource "google_storage_bucket" "models" {
  #checkov:skip=CKV_GCP_62:usage logs would need a second bucket for a bucket that holds only model weights; Cloud Audit Logs record access
  #checkov:skip=CKV_GCP_78:model folders are uploaded whole and replaced by a new folder name; versions would only double the storage
  name                        = local.bucket_names.models
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket_iam_member" "model_server_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = local.members.model_server
}

locals {
  models_mount = "/models"
  model_env = {
    MODEL_BACKEND      = var.model_gcs_path == null ? "embedding" : "nli"
    MODEL_NAME_OR_PATH = var.model_gcs_path == null ? "" : "${local.models_mount}/${var.model_gcs_path}"
    HF_HUB_OFFLINE     = "1"
    MODEL_DEVICE       = "cuda"
    # Bind every interface: Cloud Run sends traffic and probes to the container's address.
    MODEL_HOST           = "0.0.0.0"
    MODEL_DEFAULT_LABELS = join(",", var.labels_to_predict)
  }
  # Cloud Run: initial_delay_seconds + period_seconds x failure_threshold at most 240 s.
  model_startup_probe = {
    initial_delay_seconds = 0
    period_seconds        = 10
    failure_threshold     = 24
  }
}

resource "google_cloud_run_v2_service" "model_server" {
  name                = local.cloud_run_names.model_server
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  lifecycle {
    precondition {
      condition     = var.model_server_max_instances <= var.model_server_max_instances_limit
      error_message = "model_server_max_instances (${var.model_server_max_instances}) is above model_server_max_instances_limit (${var.model_server_max_instances_limit}), which Cloud SQL's max_connections is sized for: raise the limit too, with no runs in flight (changing it restarts Cloud SQL; docs/deploy.md, Scaling)."
    }
  }

  template {
    service_account                  = google_service_account.workload["model_server"].email
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

    volumes {
      name = "models"
      gcs {
        bucket    = google_storage_bucket.models.name
        read_only = true
      }
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

      volume_mounts {
        name       = "models"
        mount_path = local.models_mount
      }

      dynamic "env" {
        for_each = local.model_env
        content {
          name  = env.key
          value = env.value
        }
      }

      # /health answers 503 until the model is loaded: no traffic before that.
      startup_probe {
        initial_delay_seconds = local.model_startup_probe.initial_delay_seconds
        period_seconds        = local.model_startup_probe.period_seconds
        timeout_seconds       = 5
        failure_threshold     = local.model_startup_probe.failure_threshold
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
    google_storage_bucket_iam_member.model_server_reads_models,
  ]
}

# Only the run workers call the model (the predictions asset).
resource "google_cloud_run_v2_service_iam_member" "model_server_invoker" {
  name     = google_cloud_run_v2_service.model_server.name
  location = google_cloud_run_v2_service.model_server.location
  role     = "roles/run.invoker"
  member   = local.members.run_worker
}

# With model_url (a Vertex AI endpoint), the run workers call PredictionService.Predict.
resource "google_project_iam_custom_role" "endpoint_predictor" {
  count = var.model_url == null ? 0 : 1

  role_id     = replace("${local.name}_endpoint_predictor", "-", "_")
  title       = "batchinfer endpoint predictor"
  description = "Call Predict on the batchinfer Vertex AI endpoint."
  permissions = ["aiplatform.endpoints.predict"]
}

resource "google_project_iam_member" "run_worker_predicts" {
  count = var.model_url == null ? 0 : 1

  project = var.project_id
  role    = google_project_iam_custom_role.endpoint_predictor[0].id
  member  = local.members.run_worker
}
