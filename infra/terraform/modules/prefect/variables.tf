variable "workspace_id" {
  description = "Prefect Cloud workspace id (UUID). Null uses the provider's workspace, or none for a self-hosted server."
  type        = string
  default     = null

  validation {
    condition     = var.workspace_id == null || can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.workspace_id))
    error_message = "workspace_id must be a UUID."
  }
}

################################################################################
# Work pools
################################################################################

variable "create_kubernetes_work_pool" {
  description = "Create the kubernetes work pool."
  type        = bool
  default     = true
}

variable "kubernetes_work_pool_name" {
  description = "Name of the kubernetes work pool."
  type        = string
  default     = "gpuflow-kubernetes"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", var.kubernetes_work_pool_name))
    error_message = "kubernetes_work_pool_name must be letters, digits, '_', '.' and '-'."
  }
}

variable "kubernetes_base_job_template" {
  description = "gpuflow's base job template of the kubernetes work pool, as a JSON string (deployments/base_job_templates/kubernetes.json). Null uses Prefect's default template."
  type        = string
  default     = null

  validation {
    condition     = var.kubernetes_base_job_template == null || can(jsondecode(var.kubernetes_base_job_template).job_configuration)
    error_message = "kubernetes_base_job_template must be a JSON object with a job_configuration key."
  }
}

variable "create_ecs_work_pool" {
  description = "Create the ecs work pool."
  type        = bool
  default     = true
}

variable "ecs_work_pool_name" {
  description = "Name of the ecs work pool."
  type        = string
  default     = "gpuflow-ecs"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", var.ecs_work_pool_name))
    error_message = "ecs_work_pool_name must be letters, digits, '_', '.' and '-'."
  }
}

variable "ecs_base_job_template" {
  description = "gpuflow's base job template of the ecs work pool, as a JSON string (deployments/base_job_templates/ecs.json). Null uses Prefect's default template."
  type        = string
  default     = null

  validation {
    condition     = var.ecs_base_job_template == null || can(jsondecode(var.ecs_base_job_template).job_configuration)
    error_message = "ecs_base_job_template must be a JSON object with a job_configuration key."
  }
}

variable "work_pool_concurrency_limit" {
  description = "Most flow runs each work pool runs at once. Null means no limit (the GPU limit still applies to GPU steps)."
  type        = number
  default     = null

  validation {
    condition     = var.work_pool_concurrency_limit == null || try(var.work_pool_concurrency_limit >= 1, false)
    error_message = "work_pool_concurrency_limit must be at least 1 or null."
  }
}

variable "work_pools_paused" {
  description = "Create the work pools paused (no run is handed to a worker until resumed)."
  type        = bool
  default     = false
}

################################################################################
# GPU limits
################################################################################

variable "gpu_limit_name" {
  description = "Name of the global concurrency limit that caps GPUs in use; gpuflow occupies one slot per GPU."
  type        = string
  default     = "gpu"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.:-]*$", var.gpu_limit_name))
    error_message = "gpu_limit_name must not hold '/', '%', '&', '>', '<' or spaces."
  }
}

variable "gpu_count" {
  description = "Number of GPUs gpuflow may use at once across every pool: the size of the 'gpu' limit. Keep the namespace ResourceQuota and the GPU Auto Scaling group in line with it."
  type        = number

  validation {
    condition     = var.gpu_count >= 1 && floor(var.gpu_count) == var.gpu_count
    error_message = "gpu_count must be a positive integer."
  }
}

variable "gpu_type_counts" {
  description = "GPUs per GPU type (e.g. { a100 = 8, l4 = 4 }): one limit named gpu:<type> each, for jobs that ask for a type."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for t, n in var.gpu_type_counts : can(regex("^[a-z0-9][a-z0-9_.-]*$", t)) && n >= 1 && floor(n) == n])
    error_message = "gpu_type_counts keys must be lowercase type names ([a-z0-9_.-]) and values positive integers."
  }
}

variable "gpu_limits_active" {
  description = "Whether the GPU limits are enforced. Leave true: an inactive limit lets every request through."
  type        = bool
  default     = true
}

################################################################################
# Variables the base job templates read
################################################################################

variable "variables" {
  description = "Prefect variables to create (name => JSON value: a string, or an object such as gpuflow_ecs_network_configuration), e.g. the NAS mount path and PVC name that the base job templates read with {{ prefect.variables.<name> }}."
  # any, not map(any): map(any) would make every value one type, and these mix strings
  # with objects (the prefect provider's variable value is dynamic).
  type    = any
  default = {}

  validation {
    condition     = alltrue([for name in keys(var.variables) : can(regex("^[a-z_][a-z0-9_]*$", name))])
    error_message = "variable names must be lowercase letters, digits and underscores."
  }
}

variable "variable_tags" {
  description = "Prefect tags (a list of strings) of the Prefect variables this module creates."
  type        = list(string)
  default     = ["gpuflow", "terraform"]
}
