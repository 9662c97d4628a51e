# Cloud Build with its own service account. Projects created since 2024 run builds as the
# Compute Engine default service account, which holds no role where the organisation policy
# iam.automaticIamGrantsForDefaultServiceAccounts is enforced (the default for new
# organisations): it could neither read the uploaded source nor push. This account can do
# exactly that: read the source bucket, push to the repository, write build logs.

resource "google_storage_bucket" "build_source" {
  #checkov:skip=CKV_GCP_62:usage logs would need a second bucket for a bucket that holds only build sources; Cloud Audit Logs record access
  #checkov:skip=CKV_GCP_78:sources are uploaded again for every build; old ones are deleted after a week, no versions needed
  name                        = local.bucket_names.build_source
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket_iam_member" "build_source_reader" {
  bucket = google_storage_bucket.build_source.name
  role   = "roles/storage.objectViewer"
  member = local.members.build
}
