terraform {
  required_version = ">= 1.6, < 2.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.45 is the first release with every resource used here (Cloud Run v2 worker pools, GPU
      # Cloud Run services, Vertex AI Feature Online Store FeatureViews); 8.x may break them.
      version = ">= 6.45, < 8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }
}
