terraform {
  required_version = ">= 1.6, < 2.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.37.0 is the first release with every resource used here (6.36.1 has no
      # google_cloud_run_v2_worker_pool); tools/check-terraform validates this configuration
      # against the schemas of 6.37.0 and of the newest 7.x, so both ends of the range are checked.
      version = ">= 6.37, < 8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }
}
