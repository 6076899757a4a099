variable "region" {
  description = "AWS region everything is created in."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "gpuflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Tags of every taggable resource (added to the modules' defaults and the provider's default_tags)."
  type        = map(string)
  default     = {}
}

################################################################################
# Network and cluster that exist already
################################################################################

variable "vpc_id" {
  description = "VPC of the EKS cluster, the ECS tasks and the NAS."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets: one EFS mount target each, and where GPU instances launch."
  type        = list(string)
}

variable "cluster_security_group_ids" {
  description = "Security groups of the EKS nodes that mount the NAS."
  type        = list(string)
  default     = []
}

variable "kubeconfig_path" {
  description = "kubeconfig of the EKS cluster."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context of kubeconfig_path to use. Null uses the current context."
  type        = string
  default     = null
}

################################################################################
# gpuflow
################################################################################

variable "nas_mount_path" {
  description = "Path of the NAS in every pod and task; one value for both, since uv environments on it are not relocatable."
  type        = string
  default     = "/mnt/nas"
}

variable "gpu_count" {
  description = "GPUs gpuflow may use at once: sizes the Prefect 'gpu' limit and the namespace quota alike."
  type        = number
  default     = 8
}

variable "gpu_type_counts" {
  description = "GPUs per type, one gpu:<type> limit each (e.g. { a10g = 8 })."
  type        = map(number)
  default     = {}
}

variable "enable_gpu_capacity" {
  description = "Give the ECS cluster EC2 GPU capacity."
  type        = bool
  default     = true
}

variable "gpu_instance_type" {
  description = "Instance type of the ECS GPU capacity."
  type        = string
  default     = "g5.2xlarge"
}

variable "gpu_max_instances" {
  description = "Most GPU instances the ECS capacity provider scales to."
  type        = number
  default     = 2
}

variable "s3_bucket_name" {
  description = "Bucket of gpuflow's inputs and outputs (created elsewhere)."
  type        = string
}

variable "s3_prefixes" {
  description = "Prefixes of that bucket gpuflow may read and write."
  type        = list(string)
  default     = ["gpuflow/"]
}

variable "base_job_templates_dir" {
  description = "Folder holding gpuflow's kubernetes.json and ecs.json base job templates. Null uses the repository's deployments/base_job_templates; a missing file means Prefect's default template."
  type        = string
  default     = null
}

################################################################################
# Prefect
################################################################################

variable "prefect_api_url" {
  description = "Prefect API URL (a self-hosted server's http(s)://host/api, or Prefect Cloud's API)."
  type        = string
}

variable "prefect_api_key" {
  description = "Prefect Cloud API key (null for a self-hosted server without auth). Pass it as TF_VAR_prefect_api_key, never in a file."
  type        = string
  default     = null
  sensitive   = true
}

variable "prefect_basic_auth_key" {
  description = "user:password of a self-hosted Prefect server with basic auth (null without). Pass it as TF_VAR_prefect_basic_auth_key."
  type        = string
  default     = null
  sensitive   = true
}

variable "prefect_account_id" {
  description = "Prefect Cloud account id (null for a self-hosted server)."
  type        = string
  default     = null
}

variable "prefect_workspace_id" {
  description = "Prefect Cloud workspace id (null for a self-hosted server)."
  type        = string
  default     = null
}

variable "enable_prefect_worker" {
  description = "Install the Prefect kubernetes worker in the cluster with the official Helm chart."
  type        = bool
  default     = false
}

variable "prefect_worker_chart_version" {
  description = "Pinned version of the prefect-worker chart (required with enable_prefect_worker)."
  type        = string
  default     = null
}
