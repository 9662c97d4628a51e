# Remote state is required: the state holds the generated database password (random_password),
# so it must never sit on a workstation. The bucket is created once by
# deploy/01-state-bucket.sh and passed at init time:
#   terraform init -backend-config="bucket=PROJECT-tfstate"
terraform {
  backend "gcs" {
    prefix = "batchinfer"
  }
}
