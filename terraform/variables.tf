variable "project_id" {
  type        = string
  description = "Google Cloud project that holds every resource (e.g. my-batchinfer-prod)."

  # Google's rule for project ids: 6-30 characters, lower-case letters, digits and dashes,
  # starting with a letter and not ending with a dash.
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be 6-30 characters: lower-case letters, digits and dashes, starting with a letter, not ending with a dash."
  }
}

variable "region" {
  type        = string
  description = "Region of every regional resource. It must offer Cloud Run NVIDIA L4 GPUs (e.g. us-central1, europe-west4)."

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region name such as europe-west4."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name, so two deployments can share a project."
  default     = "batchinfer"

  # 17 at most: the longest service account id built from it, "<prefix>-model-server", must
  # stay within the provider's 30 characters (6-30, RFC 1035); the longest bucket name,
  # "<project_id>-<prefix>-build-source", then takes 61 of Cloud Storage's 63.
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-17 characters: lower-case letters, digits and dashes, starting with a letter, not ending with a dash."
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

variable "model_gcs_path" {
  type        = string
  description = "Folder of the NLI model inside the models bucket (a save_pretrained / Hub snapshot: config.json, tokenizer, weights), mounted read-only into the model server; null serves the embedding model baked into the image."
  default     = "bart-large-mnli"
  nullable    = true

  validation {
    condition     = var.model_gcs_path == null || can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.model_gcs_path))
    error_message = "model_gcs_path must be a relative folder path such as bart-large-mnli (no leading slash, no gs://)."
  }
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

  # Whole vCPUs: the quota output (quota.tf) adds them up.
  validation {
    condition     = can(regex("^[1-9][0-9]*$", var.model_server_cpu))
    error_message = "model_server_cpu must be a whole number of vCPUs such as \"1\"."
  }
}

variable "model_server_memory" {
  type        = string
  description = "Memory limit of a model-server instance (Cloud Run needs at least 16Gi with a GPU)."
  default     = "16Gi"

  # Whole GiB: the quota output (quota.tf) adds them up.
  validation {
    condition     = can(regex("^[1-9][0-9]*Gi$", var.model_server_memory))
    error_message = "model_server_memory must be whole GiB such as \"2Gi\"."
  }
}

variable "model_server_max_instances" {
  type        = number
  description = "Most model-server instances (GPUs) at once; the Dagster pool model_server is sized from it (output dagster_pool_limits). At most model_server_max_instances_limit. 1 fits the regional Cloud Run quotas of a new project (output cloud_run_quota_needed); check the GPU quota too."
  default     = 1

  validation {
    condition     = var.model_server_max_instances >= 1 && var.model_server_max_instances <= 100 && floor(var.model_server_max_instances) == var.model_server_max_instances
    error_message = "model_server_max_instances must be a whole number from 1 to 100."
  }
}

variable "model_server_max_instances_limit" {
  type        = number
  description = "The largest model_server_max_instances this deployment is sized for: Cloud SQL's max_connections follows it, not model_server_max_instances, because changing that flag restarts the database. Raise it only with no runs in flight (docs/deploy.md, Scaling)."
  default     = 4

  validation {
    condition     = var.model_server_max_instances_limit >= 1 && var.model_server_max_instances_limit <= 100 && floor(var.model_server_max_instances_limit) == var.model_server_max_instances_limit
    error_message = "model_server_max_instances_limit must be a whole number from 1 to 100."
  }
}

variable "model_server_concurrency" {
  type        = number
  description = "Requests one model-server instance takes at once (its dynamic batcher merges them)."
  default     = 8

  # Cloud Run: max_instance_request_concurrency is 1-1000.
  validation {
    condition     = var.model_server_concurrency >= 1 && var.model_server_concurrency <= 1000
    error_message = "model_server_concurrency must be 1-1000 (Cloud Run's limit)."
  }
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

  validation {
    condition     = var.db_backup_retention_count >= 1 && var.db_backup_retention_count <= 365
    error_message = "db_backup_retention_count must be 1-365 (Cloud SQL's limit)."
  }
}

variable "db_log_retention_days" {
  type        = number
  description = "Days of write-ahead log kept for point-in-time recovery (1-7)."
  default     = 7

  # Cloud SQL Enterprise edition: transaction_log_retention_days is 1-7.
  validation {
    condition     = var.db_log_retention_days >= 1 && var.db_log_retention_days <= 7
    error_message = "db_log_retention_days must be 1-7 (Cloud SQL Enterprise edition)."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the stateful parts: refuse to delete the Cloud SQL instance and the BigQuery table, and keep the buckets unless empty. Set false (and apply) only to tear a deployment down."
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
  description = "Location of the BigQuery datasets (source and staging); null is the region itself, where the FeatureView sync reads it. A multi-region (US, EU) must contain the region."
  default     = null
  nullable    = true
}

variable "feature_view_sync_cron" {
  type        = string
  description = "Extra scheduled FeatureView sync (cron, e.g. \"TZ=UTC 0 * * * *\"); null syncs only when `batchinfer import-data` asks. A loader that writes the source table itself must keep it to one row per entity_id (Vertex AI serves no other), as the import's MERGE does."
  default     = null
  nullable    = true
}

variable "pubsub_ack_deadline_seconds" {
  type        = number
  description = "Ack deadline of the request subscription (BATCHINFER_ACK_DEADLINE_SECONDS). It must outlast a sensor tick: longer than Dagster's sensor timeout (60 s), and the sensor extends it while a tick works."
  default     = 180

  # Pub/Sub allows 10-600 s; below 61 a tick that runs to Dagster's 60 s sensor timeout would
  # see its messages redelivered while it still holds them.
  validation {
    condition     = var.pubsub_ack_deadline_seconds > 60 && var.pubsub_ack_deadline_seconds <= 600
    error_message = "pubsub_ack_deadline_seconds must be 61-600: Pub/Sub's maximum is 600, and it must exceed the 60 s sensor timeout."
  }
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
  description = "Shortest redelivery delay after a nack or an expired ack deadline (0s-600s)."
  default     = "10s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.pubsub_min_backoff)) && try(tonumber(trimsuffix(var.pubsub_min_backoff, "s")) <= 600, false)
    error_message = "pubsub_min_backoff must be seconds such as \"10s\", at most 600s (Pub/Sub's limit)."
  }
}

variable "pubsub_max_backoff" {
  type        = string
  description = "Longest redelivery delay (0s-600s)."
  default     = "600s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.pubsub_max_backoff)) && try(tonumber(trimsuffix(var.pubsub_max_backoff, "s")) <= 600, false)
    error_message = "pubsub_max_backoff must be seconds such as \"600s\", at most 600s (Pub/Sub's limit)."
  }
}

variable "pubsub_message_retention" {
  type        = string
  description = "How long unacknowledged messages are kept (10 minutes to 7 days)."
  default     = "604800s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.pubsub_message_retention)) && try(tonumber(trimsuffix(var.pubsub_message_retention, "s")) >= 600 && tonumber(trimsuffix(var.pubsub_message_retention, "s")) <= 604800, false)
    error_message = "pubsub_message_retention must be seconds from \"600s\" to \"604800s\" (Pub/Sub's limits for a subscription)."
  }
}

variable "dagster_ui_members" {
  type        = list(string)
  description = "IAM members allowed through Identity-Aware Proxy to the Dagster UI (e.g. group:ml-ops@example.com, user:me@example.com)."
  default     = []

  validation {
    condition     = alltrue([for member in var.dagster_ui_members : can(regex("^(user|group|serviceAccount|domain):", member))])
    error_message = "Each dagster_ui_members entry must start with user:, group:, serviceAccount: or domain:."
  }
}

variable "iap_oauth_client_id" {
  type        = string
  description = "Client ID of your own OAuth client (type Web application) for IAP; null uses IAP's Google-managed client, which admits only accounts of the project's organisation. Needed for a project without an organisation (docs/deploy.md, step 8)."
  default     = null
  nullable    = true

  validation {
    condition     = var.iap_oauth_client_id == null || can(regex("^[0-9]+-[a-z0-9]+\\.apps\\.googleusercontent\\.com$", var.iap_oauth_client_id))
    error_message = "iap_oauth_client_id must be an OAuth client ID such as 123456789012-abc123.apps.googleusercontent.com."
  }
}

variable "iap_oauth_client_secret" {
  type        = string
  description = "Secret Manager secret (its id, in this project) holding the secret of iap_oauth_client_id; read only when iap_oauth_client_id is set."
  default     = "batchinfer-iap-oauth-client-secret"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.iap_oauth_client_secret))
    error_message = "iap_oauth_client_secret must be a secret id: 1-255 letters, digits, - or _."
  }
}

variable "dagster_ui_domain" {
  type        = string
  description = "Domain name of the Dagster UI's HTTPS load balancer (its Google-managed certificate needs the name to resolve to the load balancer's address, output dagster_ui_ip). null uses <ip>.nip.io, a public wildcard DNS service, which needs no DNS record of yours."
  default     = null
  nullable    = true
}

variable "sensor_max_pull" {
  type        = number
  description = "BATCHINFER_MAX_PULL: most request messages one sensor tick (every 5 s) takes in; null keeps the code's default (batchinfer_dagster/settings.py). docs/capacity.md sizes it: the busiest hour's requests a second x 5, e.g. 15000 at 100 M requests a day."
  default     = null
  nullable    = true

  validation {
    condition     = var.sensor_max_pull == null || try(var.sensor_max_pull >= 1 && floor(var.sensor_max_pull) == var.sensor_max_pull, false)
    error_message = "sensor_max_pull must be a whole number of at least 1, or null."
  }
}

variable "dagster_daemon_cpu" {
  type        = string
  description = "CPU of the Dagster daemon (sensors, run queue, run monitoring; the runs themselves are Cloud Run job executions)."
  default     = "1"

  # Whole vCPUs: the quota output (quota.tf) adds them up.
  validation {
    condition     = can(regex("^[1-9][0-9]*$", var.dagster_daemon_cpu))
    error_message = "dagster_daemon_cpu must be a whole number of vCPUs such as \"1\"."
  }
}

variable "dagster_daemon_memory" {
  type        = string
  description = "Memory of the Dagster daemon: it holds the daemon processes and one code server (about 265 MB for this code location)."
  default     = "2Gi"

  # Whole GiB: the quota output (quota.tf) adds them up.
  validation {
    condition     = can(regex("^[1-9][0-9]*Gi$", var.dagster_daemon_memory))
    error_message = "dagster_daemon_memory must be whole GiB such as \"2Gi\"."
  }
}

variable "run_worker_cpu" {
  type        = string
  description = "CPU of one run worker (one Cloud Run job execution per Dagster run)."
  default     = "1"

  # Whole vCPUs: the quota output (quota.tf) adds them up.
  validation {
    condition     = can(regex("^[1-9][0-9]*$", var.run_worker_cpu))
    error_message = "run_worker_cpu must be a whole number of vCPUs such as \"1\"."
  }
}

variable "run_worker_memory" {
  type        = string
  description = "Memory of one run worker: the code location (about 265 MB) plus one batch of texts, features and predictions in flight."
  default     = "2Gi"

  # Whole GiB: the quota output (quota.tf) adds them up.
  validation {
    condition     = can(regex("^[1-9][0-9]*Gi$", var.run_worker_memory))
    error_message = "run_worker_memory must be whole GiB such as \"2Gi\"."
  }
}

variable "run_max_runtime_seconds" {
  type        = number
  description = "Longest a Dagster run may take before Cloud Run ends its execution and run monitoring fails it (so its pool slot is freed and run retries start it again). The image's deploy/dagster.yaml holds the same number (run_timeout, max_runtime_seconds; Dagster reads no variable there): plan refuses a value that differs from the image's."
  default     = 3600

  # Cloud Run jobs: a task timeout is at most 168 hours.
  validation {
    condition     = var.run_max_runtime_seconds >= 60 && var.run_max_runtime_seconds <= 604800
    error_message = "run_max_runtime_seconds must be 60-604800 (Cloud Run's task timeout limit is 168 hours)."
  }
}

variable "database_wait_seconds" {
  type        = number
  description = "How long each Dagster container waits at start for the database to answer before it gives up (Direct VPC egress may have no connectivity for over a minute after an instance starts; Cloud Run, Direct VPC egress limitations)."
  default     = 180

  validation {
    condition     = var.database_wait_seconds >= 0 && var.database_wait_seconds <= 3600
    error_message = "database_wait_seconds must be 0-3600."
  }
}

variable "compute_log_retention_days" {
  type        = number
  description = "Days Dagster run logs are kept in their bucket."
  default     = 30

  validation {
    condition     = var.compute_log_retention_days >= 1
    error_message = "compute_log_retention_days must be at least 1."
  }
}

variable "image_retention_days" {
  type        = number
  description = "Image versions older than this are deleted from Artifact Registry, except the image_keep_count most recent."
  default     = 30

  validation {
    condition     = var.image_retention_days >= 1
    error_message = "image_retention_days must be at least 1."
  }
}

variable "image_keep_count" {
  type        = number
  description = "Most recent versions of each image kept whatever their age (rollback targets)."
  default     = 10

  validation {
    condition     = var.image_keep_count >= 1
    error_message = "image_keep_count must be at least 1."
  }
}
