variable "region" {
  description = "Alibaba Cloud region of the ACK cluster and the NAS."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}-[a-z]+(-[0-9]+)?$", var.region))
    error_message = "region must be an Alibaba Cloud region id such as cn-hangzhou."
  }
}

variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "gpuflow"
}

variable "tags" {
  description = "Tags of every taggable resource (added to the modules' defaults)."
  type        = map(string)
  default     = {}
}

variable "vswitch_ids" {
  description = "vSwitches of the ACK cluster's VPC: one NAS mount target each."
  type        = list(string)
}

variable "allowed_cidr_blocks" {
  description = "Node and pod CIDR blocks of the cluster, allowed read-write NFS access."
  type        = list(string)
}

variable "create_storage_class" {
  description = "Create the alicloud-nas-subpath StorageClass. False where the cluster already has one."
  type        = bool
  default     = true
}

variable "kubeconfig_path" {
  description = "kubeconfig of the ACK cluster."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context of kubeconfig_path to use. Null uses the current context."
  type        = string
  default     = null
}

variable "nas_mount_path" {
  description = "Path of the NAS in every pod; the same everywhere, since uv environments on it are not relocatable."
  type        = string
  default     = "/mnt/nas"
}

variable "gpu_count" {
  description = "GPUs gpuflow may use at once: sizes the Prefect 'gpu' limit and the namespace quota alike."
  type        = number
  default     = 8
}

variable "gpu_type_counts" {
  description = "GPUs per type, one gpu:<type> limit each."
  type        = map(number)
  default     = {}
}

variable "base_job_templates_dir" {
  description = "Folder holding gpuflow's kubernetes.json base job template. Null uses the repository's deployments/base_job_templates."
  type        = string
  default     = null
}

variable "prefect_api_url" {
  description = "Prefect API URL (a self-hosted server's http(s)://host/api, or Prefect Cloud's API)."
  type        = string
}

variable "prefect_api_key" {
  description = "Prefect Cloud API key (null for a self-hosted server). Pass it as TF_VAR_prefect_api_key, never in a file."
  type        = string
  default     = null
  sensitive   = true
}

variable "prefect_basic_auth_key" {
  description = "user:password of a self-hosted Prefect server with basic auth (null without)."
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
