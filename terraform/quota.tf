# What this configuration asks of the project's regional Cloud Run quotas at most: every
# workload at its largest instance count at once, each instance at its limits. New projects
# have been seen with 20 vCPU and 40 GiB per region ("Total CPU allocation" and "Total memory
# allocation, per project per region") and no L4 GPU quota: docs/deploy.md, step 0, shows how
# to read yours; docs/capacity.md has the numbers per plan.
#   run workers: max_concurrent_runs executions at once (dagster.yaml's run queue);
#   webserver: its max_instance_count; daemon: one; CLI: one execution at a time (deploy/run.sh).

locals {
  cloud_run_sizes = {
    model_server = { instances = var.model_server_max_instances, cpu = var.model_server_cpu, memory = var.model_server_memory }
    webserver    = local.webserver_size
    daemon       = { instances = 1, cpu = var.dagster_daemon_cpu, memory = var.dagster_daemon_memory }
    run_worker   = { instances = local.dagster_limits.max_concurrent_runs, cpu = var.run_worker_cpu, memory = var.run_worker_memory }
    cli          = local.cli_size
  }

  cloud_run_quota_needed = {
    cpu        = sum([for size in values(local.cloud_run_sizes) : size.instances * tonumber(size.cpu)])
    memory_gib = sum([for size in values(local.cloud_run_sizes) : size.instances * tonumber(trimsuffix(size.memory, "Gi"))])
    l4_gpus    = var.model_server_max_instances
  }
}

output "cloud_run_quota_needed" {
  description = "Regional Cloud Run quota this configuration needs at most (vCPU, GiB, L4 GPUs without zonal redundancy): compare with the quotas shown by docs/deploy.md, step 0."
  value       = local.cloud_run_quota_needed
}
