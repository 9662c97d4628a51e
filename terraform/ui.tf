# The Dagster UI through a global external Application Load Balancer with Identity-Aware Proxy:
# a browser signs in with its Google account and IAP lets through only dagster_ui_members. The
# webserver's ingress accepts load-balancer traffic only, and only IAP's service agent may
# invoke it. By default IAP uses a Google-managed OAuth client, which admits only accounts of the
# project's organisation ("Customize an OAuth configuration to enable IAP"); a project without
# an organisation (a personal account) sets iap_oauth_client_id and keeps the client's secret in
# Secret Manager (iap_oauth_client_secret): docs/deploy.md, step 8, creates both.

# The custom client's secret, read by the deployer's Terraform (it lands in the remote state,
# like the database password); no workload reads it.
data "google_secret_manager_secret_version" "iap_oauth_client_secret" {
  count = var.iap_oauth_client_id == null ? 0 : 1

  secret = var.iap_oauth_client_secret
}

resource "google_compute_global_address" "dagster_ui" {
  name = "${local.name}-dagster-ui"

  depends_on = [google_project_service.enabled]
}

locals {
  dagster_ui_domain = coalesce(var.dagster_ui_domain, "${google_compute_global_address.dagster_ui.address}.nip.io")
}

resource "google_compute_managed_ssl_certificate" "dagster_ui" {
  name = "${local.name}-dagster-ui"

  managed {
    domains = [local.dagster_ui_domain]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_region_network_endpoint_group" "dagster_ui" {
  name                  = "${local.name}-dagster-ui"
  region                = var.region
  network_endpoint_type = "SERVERLESS"

  cloud_run {
    service = google_cloud_run_v2_service.dagster_webserver.name
  }
}

resource "google_compute_backend_service" "dagster_ui" {
  name = "${local.name}-dagster-ui"
  # As Google's sample for serverless NEGs: the load balancer reaches Cloud Run inside Google's
  # network; the browser's connection is HTTPS (the target proxy below). No timeout_sec: it is
  # refused with serverless NEGs.
  protocol              = "HTTP"
  port_name             = "http"
  load_balancing_scheme = "EXTERNAL_MANAGED"

  backend {
    group = google_compute_region_network_endpoint_group.dagster_ui.id
  }

  iap {
    enabled              = true
    oauth2_client_id     = var.iap_oauth_client_id
    oauth2_client_secret = one(data.google_secret_manager_secret_version.iap_oauth_client_secret[*].secret_data)
  }

  log_config {
    enable = true
  }
}

resource "google_compute_url_map" "dagster_ui" {
  name            = "${local.name}-dagster-ui"
  default_service = google_compute_backend_service.dagster_ui.id
}

resource "google_compute_target_https_proxy" "dagster_ui" {
  name             = "${local.name}-dagster-ui"
  url_map          = google_compute_url_map.dagster_ui.id
  ssl_certificates = [google_compute_managed_ssl_certificate.dagster_ui.id]
}

resource "google_compute_global_forwarding_rule" "dagster_ui" {
  name                  = "${local.name}-dagster-ui"
  target                = google_compute_target_https_proxy.dagster_ui.id
  ip_address            = google_compute_global_address.dagster_ui.id
  port_range            = "443"
  load_balancing_scheme = "EXTERNAL_MANAGED"
}

# Who may open the UI.
resource "google_iap_web_backend_service_iam_member" "dagster_ui" {
  for_each = toset(var.dagster_ui_members)

  web_backend_service = google_compute_backend_service.dagster_ui.name
  role                = "roles/iap.httpsResourceAccessor"
  member              = each.value
}

# IAP forwards the signed-in request to Cloud Run as its service agent. The agent exists once
# IAP has been used in the project: deploy/03-apply.sh creates it with
# `gcloud beta services identity create --service=iap.googleapis.com` before this apply.
resource "google_cloud_run_v2_service_iam_member" "dagster_ui_iap" {
  name     = google_cloud_run_v2_service.dagster_webserver.name
  location = google_cloud_run_v2_service.dagster_webserver.location
  role     = "roles/run.invoker"
  member   = local.iap_service_agent
}
