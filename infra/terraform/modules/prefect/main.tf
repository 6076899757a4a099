# Prefect's default base job templates, used where gpuflow's template is not given.
data "prefect_worker_metadata" "defaults" {
  workspace_id = var.workspace_id
}

locals {
  # jsonencode(jsondecode(...)) normalizes whitespace so that a re-formatted file is no diff.
  kubernetes_base_job_template = (
    var.kubernetes_base_job_template == null
    ? data.prefect_worker_metadata.defaults.base_job_configs.kubernetes
    : jsonencode(jsondecode(var.kubernetes_base_job_template))
  )

  ecs_base_job_template = (
    var.ecs_base_job_template == null
    ? data.prefect_worker_metadata.defaults.base_job_configs.ecs
    : jsonencode(jsondecode(var.ecs_base_job_template))
  )
}

################################################################################
# Work pools
################################################################################

resource "prefect_work_pool" "kubernetes" {
  count = var.create_kubernetes_work_pool ? 1 : 0

  name              = var.kubernetes_work_pool_name
  type              = "kubernetes"
  description       = "gpuflow: flow runs as Kubernetes pods; GPU steps as Kubeflow PyTorchJobs"
  paused            = var.work_pools_paused
  concurrency_limit = var.work_pool_concurrency_limit
  base_job_template = local.kubernetes_base_job_template
  workspace_id      = var.workspace_id
}

resource "prefect_work_pool" "ecs" {
  count = var.create_ecs_work_pool ? 1 : 0

  name              = var.ecs_work_pool_name
  type              = "ecs"
  description       = "gpuflow: flow runs as ECS tasks (Fargate); GPU steps as ECS tasks on EC2 GPU capacity"
  paused            = var.work_pools_paused
  concurrency_limit = var.work_pool_concurrency_limit
  base_job_template = local.ecs_base_job_template
  workspace_id      = var.workspace_id
}

################################################################################
# GPU limits: one slot per GPU
################################################################################

resource "prefect_global_concurrency_limit" "gpu" {
  name         = var.gpu_limit_name
  limit        = var.gpu_count
  active       = var.gpu_limits_active
  workspace_id = var.workspace_id
}

resource "prefect_global_concurrency_limit" "gpu_type" {
  for_each = var.gpu_type_counts

  name         = "${var.gpu_limit_name}:${each.key}"
  limit        = each.value
  active       = var.gpu_limits_active
  workspace_id = var.workspace_id

  lifecycle {
    precondition {
      condition     = each.value <= var.gpu_count
      error_message = "A per-type GPU limit cannot exceed gpu_count: the 'gpu' limit is taken too."
    }
  }
}

################################################################################
# Variables
################################################################################

resource "prefect_variable" "this" {
  for_each = var.variables

  name         = each.key
  value        = each.value
  tags         = var.variable_tags
  workspace_id = var.workspace_id
}
