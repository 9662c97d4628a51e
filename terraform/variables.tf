variable "project_id" {
  type        = string
  description = "Google Cloud project that holds every resource (e.g. my-batchinfer-prod)."
}

variable "region" {
  type        = string
  description = "Region of every regional resource. It must offer Cloud Run NVIDIA L4 GPUs (e.g. us-central1, europe-west4)."
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name, so two deployments can share a project."
  default     = "batchinfer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters: lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels put on every resource that takes labels."
  default     = { app = "batchinfer" }
}

variable "network_cidr" {
  type        = string
  description = "Primary range of the subnet the Cloud Run services egress through."
  default     = "10.20.0.0/24"
}

variable "private_service_access_prefix_length" {
  type        = number
  description = "Prefix length of the range reserved for private services access (Cloud SQL's private IP)."
  default     = 20
}

variable "dagster_image" {
  type        = string
  description = "Dagster image (repository root Dockerfile) for the webserver, daemon and CLI job, e.g. REGION-docker.pkg.dev/PROJECT/batchinfer/dagster:TAG."
}

variable "model_server_image" {
  type        = string
  description = "Model-server image (model-server/Dockerfile), e.g. REGION-docker.pkg.dev/PROJECT/batchinfer/model-server:TAG."
}

variable "model_url" {
  type        = string
  description = "BATCHINFER_MODEL_URL override: the vertex://projects/P/locations/L/endpoints/E printed by `batchinfer deploy-model`; null uses the Cloud Run model server."
  default     = null
  nullable    = true

  validation {
    condition     = var.model_url == null || can(regex("^vertex://projects/[^/]+/locations/[^/]+/endpoints/[^/]+$", var.model_url))
    error_message = "model_url must be vertex://projects/PROJECT/locations/REGION/endpoints/ENDPOINT_ID."
  }
}

variable "model_backend" {
  type        = string
  description = "MODEL_BACKEND of the model server: nli (a Hugging Face NLI model) or embedding (the packaged small model)."
  default     = "nli"

  validation {
    condition     = contains(["nli", "embedding"], var.model_backend)
    error_message = "model_backend must be nli or embedding."
  }
}

variable "model_name_or_path" {
  type        = string
  description = "MODEL_NAME_OR_PATH of the model server (a Hugging Face model name, or a path inside the image)."
  default     = "facebook/bart-large-mnli"
}

variable "model_server_gpu" {
  type        = string
  description = "Cloud Run GPU type of the model server (node selector accelerator)."
  default     = "nvidia-l4"
}

variable "model_server_cpu" {
  type        = string
  description = "CPU limit of a model-server instance (Cloud Run needs at least 4 with a GPU)."
  default     = "4"
}

variable "model_server_memory" {
  type        = string
  description = "Memory limit of a model-server instance (Cloud Run needs at least 16Gi with a GPU)."
  default     = "16Gi"
}

variable "model_server_max_instances" {
  type        = number
  description = "Most model-server instances (GPUs) at once; size the Dagster pool model_server to match. Check the project's GPU quota."
  default     = 3
}

variable "model_server_concurrency" {
  type        = number
  description = "Requests one model-server instance takes at once (its dynamic batcher merges them)."
  default     = 8
}

variable "labels_to_predict" {
  type        = list(string)
  description = "Candidate labels of the zero-shot classification (BATCHINFER_LABELS)."
  default     = ["mobile", "website", "billing", "account access"]
}

variable "db_tier" {
  type        = string
  description = "Cloud SQL machine tier of the PostgreSQL instance."
  default     = "db-custom-2-7680"
}

variable "db_availability_type" {
  type        = string
  description = "REGIONAL (a standby in another zone) or ZONAL."
  default     = "REGIONAL"

  validation {
    condition     = contains(["REGIONAL", "ZONAL"], var.db_availability_type)
    error_message = "db_availability_type must be REGIONAL or ZONAL."
  }
}

variable "db_disk_size_gb" {
  type        = number
  description = "Initial disk size of the PostgreSQL instance in GB (it grows automatically)."
  default     = 20
}

variable "db_backup_start_time" {
  type        = string
  description = "UTC start (HH:MM) of the daily Cloud SQL backup window."
  default     = "02:00"
}

variable "db_backup_retention_count" {
  type        = number
  description = "Daily backups Cloud SQL keeps."
  default     = 14
}

variable "db_log_retention_days" {
  type        = number
  description = "Days of write-ahead log kept for point-in-time recovery (1-7)."
  default     = 7
}

variable "db_deletion_protection" {
  type        = bool
  description = "Refuse to delete the Cloud SQL instance (set false only to tear a test deployment down)."
  default     = true
}

variable "app_database_name" {
  type        = string
  description = "PostgreSQL database of the app tables (BATCHINFER_DATABASE_URL)."
  default     = "batchinfer"
}

variable "dagster_database_name" {
  type        = string
  description = "PostgreSQL database of Dagster's run, event and schedule storage."
  default     = "dagster"
}

variable "db_user" {
  type        = string
  description = "PostgreSQL user of the app and of Dagster; its password is generated and kept in Secret Manager."
  default     = "batchinfer"
}

variable "bigquery_location" {
  type        = string
  description = "Location of the BigQuery dataset; the feature view sync reads it, so keep it near the region (e.g. US, EU, or the region itself)."
  default     = "US"
}

variable "bigquery_deletion_protection" {
  type        = bool
  description = "Refuse to delete the BigQuery feature source table."
  default     = true
}

variable "feature_view_sync_cron" {
  type        = string
  description = "Extra scheduled FeatureView sync (cron, e.g. \"TZ=UTC 0 * * * *\"); null syncs only when `batchinfer import-data` asks."
  default     = null
  nullable    = true
}

variable "pubsub_ack_deadline_seconds" {
  type        = number
  description = "Ack deadline of the request subscription (BATCHINFER_ACK_DEADLINE_SECONDS)."
  default     = 60
}

variable "pubsub_max_delivery_attempts" {
  type        = number
  description = "Deliveries before Pub/Sub moves a message to the dead-letter topic (5-100)."
  default     = 5

  validation {
    condition     = var.pubsub_max_delivery_attempts >= 5 && var.pubsub_max_delivery_attempts <= 100
    error_message = "Pub/Sub allows 5 to 100 delivery attempts."
  }
}

variable "pubsub_min_backoff" {
  type        = string
  description = "Shortest redelivery delay after a nack or an expired ack deadline."
  default     = "10s"
}

variable "pubsub_max_backoff" {
  type        = string
  description = "Longest redelivery delay."
  default     = "600s"
}

variable "pubsub_message_retention" {
  type        = string
  description = "How long unacknowledged messages are kept (at most 7 days)."
  default     = "604800s"
}

variable "dagster_ui_members" {
  type        = list(string)
  description = "IAM members allowed to open the Dagster UI (e.g. group:ml-ops@example.com); they reach it from inside the VPC."
  default     = []
}

variable "dagster_daemon_cpu" {
  type        = string
  description = "CPU of the Dagster daemon, which also executes the runs (DefaultRunLauncher)."
  default     = "2"
}

variable "dagster_daemon_memory" {
  type        = string
  description = "Memory of the Dagster daemon."
  default     = "4Gi"
}

variable "compute_log_retention_days" {
  type        = number
  description = "Days Dagster run logs are kept in their bucket."
  default     = 30
}
