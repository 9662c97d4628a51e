# Docker images: the Dagster image and the model-server image.

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  repository_id = local.name
  location      = var.region
  format        = "DOCKER"
  description   = "batchinfer images: dagster (webserver, daemon, CLI) and model-server."

  docker_config {
    immutable_tags = false
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_artifact_registry_repository_iam_member" "readers" {
  for_each = {
    dagster      = local.dagster_member
    model_server = local.model_server_member
  }

  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = each.value
}
