# The request queue (docs/architecture.md, "Delivery guarantees"): topic, pull subscription with retry and dead-letter policies.

resource "google_pubsub_topic" "requests" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate; messages hold only record ids
  name                       = "${local.name}-prediction-requests"
  message_retention_duration = var.pubsub_message_retention

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest; customer-managed keys (Cloud KMS) are not required for this data and would add key rotation and access to operate; messages hold only record ids
  name                       = "${local.name}-prediction-requests-dead-letter"
  message_retention_duration = var.pubsub_message_retention

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_subscription" "requests" {
  name  = "${local.name}-prediction-requests-sub"
  topic = google_pubsub_topic.requests.id

  ack_deadline_seconds       = var.pubsub_ack_deadline_seconds
  message_retention_duration = var.pubsub_message_retention
  enable_message_ordering    = false

  retry_policy {
    minimum_backoff = var.pubsub_min_backoff
    maximum_backoff = var.pubsub_max_backoff
  }

  # Messages the sensor can never process (it crashes on them before acking) end here after
  # max_delivery_attempts; malformed ones it can read go to the dead_letters table instead.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.pubsub_max_delivery_attempts
  }

  # Never expire for inactivity: a paused daemon must not lose the subscription.
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "dead_letter" {
  name                       = "${local.name}-prediction-requests-dead-letter-sub"
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.pubsub_message_retention

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it publishes to the dead-letter topic
# and acknowledges (as a subscriber) the message on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  subscription = google_pubsub_subscription.requests.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# The daemon's sensor pulls, acks and extends the deadline of requests, and reads back what
# Pub/Sub dead-lettered (sensors.read_back_dead_letters) into the dead_letters table; the CLI
# publishes (`batchinfer publish`, `predict`, `dead-letters replay`) and reads dead letters
# from that table, not from the subscription.
resource "google_pubsub_topic_iam_member" "cli_publisher" {
  topic  = google_pubsub_topic.requests.id
  role   = "roles/pubsub.publisher"
  member = local.members.cli
}

resource "google_pubsub_subscription_iam_member" "daemon_subscriber" {
  subscription = google_pubsub_subscription.requests.id
  role         = "roles/pubsub.subscriber"
  member       = local.members.daemon
}

resource "google_pubsub_subscription_iam_member" "daemon_dead_letter_subscriber" {
  subscription = google_pubsub_subscription.dead_letter.id
  role         = "roles/pubsub.subscriber"
  member       = local.members.daemon
}
