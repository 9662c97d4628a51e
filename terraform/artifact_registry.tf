# Docker images: the Dagster image and the model-server image.

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate
  repository_id = local.name
  location      = var.region
  format        = "DOCKER"
  description   = "batchinfer images: dagster (webserver, daemon, run worker, CLI) and model-server."

  docker_config {
    immutable_tags = false
  }

  # Artifact Registry deletes what a DELETE policy matches unless a KEEP policy also matches it:
  # versions older than the retention go, the most recent ones stay whatever their age. A KEEP
  # policy alone deletes nothing.
  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "${var.image_retention_days * 86400}s"
    }
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_keep_count
    }
  }

  depends_on = [google_project_service.enabled]
}

# Cloud Run pulls images with its service agent, which reads repositories of its own project:
# the workloads' accounts need no role here. Only the build account pushes.
resource "google_artifact_registry_repository_iam_member" "build_writer" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = local.members.build
}
