# A private network for Cloud SQL's private IP and the Cloud Run services' Direct VPC egress.

resource "google_compute_network" "main" {
  name                    = "${local.name}-vpc"
  auto_create_subnetworks = false

  depends_on = [google_project_service.enabled]
}

resource "google_compute_subnetwork" "main" {
  name          = "${local.name}-subnet"
  region        = var.region
  network       = google_compute_network.main.id
  ip_cidr_range = var.network_cidr
  # Google APIs (and Cloud Run's internal ingress) are reached without public IPs.
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Private services access: the peering range Cloud SQL takes its private IP from.
resource "google_compute_global_address" "private_services" {
  name          = "${local.name}-private-services"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = var.private_service_access_prefix_length
  network       = google_compute_network.main.id
}

# ABANDON: deleting the peering fails while the service producer (Cloud SQL) still holds
# addresses in it, which it does for a while after the instance is deleted; abandoning it lets
# `terraform destroy` finish, and deleting the network removes the peering.
resource "google_service_networking_connection" "private_services" {
  network                 = google_compute_network.main.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services.name]
  deletion_policy         = "ABANDON"
}

# Outbound internet for the containers (Vertex AI's optimized online-store endpoint domain)
# without giving any of them a public IP.
resource "google_compute_router" "main" {
  name    = "${local.name}-router"
  region  = var.region
  network = google_compute_network.main.id
}

resource "google_compute_router_nat" "main" {
  name                               = "${local.name}-nat"
  router                             = google_compute_router.main.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Nothing listens on this network: Cloud Run containers only egress through it. Deny every
# inbound connection explicitly (and log attempts) instead of relying on the implied rule.
resource "google_compute_firewall" "deny_ingress" {
  name      = "${local.name}-deny-all-ingress"
  network   = google_compute_network.main.id
  direction = "INGRESS"
  priority  = 65534

  source_ranges = ["0.0.0.0/0"]

  deny {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
