variable "name" {
  description = "Name prefix of the objects this module creates (StorageClass, PersistentVolume, quota, role)."
  type        = string
  default     = "gpuflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3-40 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "namespace" {
  description = "Namespace the flow pods, the PyTorchJobs and the Prefect worker run in."
  type        = string
  default     = "gpuflow"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace)) && var.namespace != "default"
    error_message = "namespace must be a DNS-1123 label other than 'default'."
  }
}

variable "create_namespace" {
  description = "Create the namespace. False uses an existing one of that name."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels added to every object this module creates, merged over the module's defaults."
  type        = map(string)
  default     = {}
}

################################################################################
# Shared storage
################################################################################

variable "nas_backend" {
  description = "Which NAS backs the ReadWriteMany volume: efs (static PV through the EFS CSI driver and gpuflow's access point) or alicloud (dynamic subpath volume of the alicloud-nas-subpath StorageClass on ACK)."
  type        = string
  default     = "efs"

  validation {
    condition     = contains(["efs", "alicloud"], var.nas_backend)
    error_message = "nas_backend must be efs or alicloud."
  }
}

variable "efs_volume_handle" {
  description = "volumeHandle of the EFS PersistentVolume, fs-id::fsap-id (the nas module's volume_handle output). Required when nas_backend is efs."
  type        = string
  default     = null

  validation {
    condition     = var.efs_volume_handle == null || can(regex("^fs-[0-9a-f]+(::fsap-[0-9a-f]+)?$", var.efs_volume_handle))
    error_message = "efs_volume_handle must look like fs-0123abcd::fsap-0123abcd."
  }
}

variable "create_storage_class" {
  description = "Create the StorageClass. Set false where the cluster already has it (ACK clusters often ship alicloud-nas-subpath)."
  type        = bool
  default     = true
}

variable "storage_class_name" {
  description = "Name of the StorageClass of the NAS volume. Null picks <name>-efs for efs and alicloud-nas-subpath for alicloud."
  type        = string
  default     = null
}

variable "alicloud_storage_class_parameters" {
  description = "Parameters of the alicloud-nas-subpath StorageClass (volumeAs, server, archiveOnDelete): the nas-alicloud module's storage_class_parameters output."
  type        = map(string)
  default     = {}
}

variable "pvc_name" {
  description = "Name of the ReadWriteMany PersistentVolumeClaim every flow pod and job replica mounts."
  type        = string
  default     = "gpuflow-nas"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.pvc_name))
    error_message = "pvc_name must be a DNS-1123 label."
  }
}

variable "storage_size" {
  description = "Requested size of the NAS volume (EFS and NAS grow on demand; the number is what Kubernetes records)."
  type        = string
  default     = "200Gi"

  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi|Ti|Pi)$", var.storage_size))
    error_message = "storage_size must be a quantity such as 200Gi."
  }
}

variable "nas_mount_path" {
  description = "Path the NAS is mounted at in every pod and job replica. uv environments on the NAS are not relocatable, so it must be the same everywhere (and the same as in ECS tasks)."
  type        = string
  default     = "/mnt/nas"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]+$", var.nas_mount_path)) && !strcontains(var.nas_mount_path, "..") && !endswith(var.nas_mount_path, "/")
    error_message = "nas_mount_path must be an absolute path without '..' or a trailing slash."
  }
}

################################################################################
# GPU quota and RBAC
################################################################################

variable "gpu_quota" {
  description = "Hard limit of requests.nvidia.com/gpu in the namespace: a second fence behind the Prefect 'gpu' concurrency limit, sized the same. Null creates no quota."
  type        = number
  default     = 8

  validation {
    condition     = var.gpu_quota == null || try(var.gpu_quota >= 0 && floor(var.gpu_quota) == var.gpu_quota, false)
    error_message = "gpu_quota must be a non-negative integer or null."
  }
}

variable "service_account_name" {
  description = "Service account of the flow pods: it may create and watch PyTorchJobs and read pods, their logs and events in the namespace."
  type        = string
  default     = "gpuflow-flow"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.service_account_name))
    error_message = "service_account_name must be a DNS-1123 label."
  }
}

variable "service_account_annotations" {
  description = "Annotations of the flow service account, e.g. eks.amazonaws.com/role-arn for IRSA (S3 access from the flow pods)."
  type        = map(string)
  default     = {}
}

################################################################################
# Prefect worker (optional)
################################################################################

variable "enable_prefect_worker" {
  description = "Install the Prefect worker with the official prefect-worker Helm chart."
  type        = bool
  default     = false
}

variable "prefect_worker_chart_repository" {
  description = "Helm repository of the prefect-worker chart."
  type        = string
  default     = "https://prefecthq.github.io/prefect-helm"
}

variable "prefect_worker_chart_version" {
  description = "Pinned version of the prefect-worker chart. Required when enable_prefect_worker is true."
  type        = string
  default     = null
}

variable "prefect_worker_image_tag" {
  description = "Tag of the prefecthq/prefect image the worker runs (match the Prefect version of the server)."
  type        = string
  default     = "3.9.1-python3.11-kubernetes"
}

variable "work_pool_name" {
  description = "Kubernetes work pool the worker polls (the prefect module's kubernetes_work_pool_name output)."
  type        = string
  default     = "gpuflow-kubernetes"
}

variable "prefect_api_config" {
  description = "How the worker reaches Prefect: cloud (Prefect Cloud, with an API key) or server (a self-hosted Prefect server at prefect_api_url)."
  type        = string
  default     = "server"

  validation {
    condition     = contains(["cloud", "server"], var.prefect_api_config)
    error_message = "prefect_api_config must be cloud or server."
  }
}

variable "prefect_api_url" {
  description = "API URL of a self-hosted Prefect server (prefect_api_config = server), e.g. http://prefect-server.prefect.svc:4200/api."
  type        = string
  default     = null

  validation {
    condition     = var.prefect_api_url == null || can(regex("^https?://", var.prefect_api_url))
    error_message = "prefect_api_url must be an http(s) URL."
  }
}

variable "prefect_account_id" {
  description = "Prefect Cloud account id (prefect_api_config = cloud)."
  type        = string
  default     = null
}

variable "prefect_workspace_id" {
  description = "Prefect Cloud workspace id (prefect_api_config = cloud)."
  type        = string
  default     = null
}

variable "prefect_api_key" {
  description = "Prefect Cloud API key; stored in a Kubernetes Secret the worker reads. Never logged or put in the chart values."
  type        = string
  default     = null
  sensitive   = true
}

variable "prefect_worker_replicas" {
  description = "Number of worker replicas."
  type        = number
  default     = 1

  validation {
    condition     = var.prefect_worker_replicas >= 1 && floor(var.prefect_worker_replicas) == var.prefect_worker_replicas
    error_message = "prefect_worker_replicas must be a positive integer."
  }
}

variable "prefect_worker_values" {
  description = "Extra Helm values for the prefect-worker chart, merged over the module's values (a structure, encoded to YAML)."
  type        = any
  default     = {}
}

################################################################################
# Cluster add-ons (optional): what the GPU jobs need from the cluster
################################################################################

variable "install_efs_csi_driver" {
  description = "Install the AWS EFS CSI driver (kubernetes-sigs/aws-efs-csi-driver chart) for the NAS PVC. Off: EKS clusters usually run it as an EKS add-on."
  type        = bool
  default     = false
}

variable "efs_csi_driver_chart_version" {
  description = "Pinned aws-efs-csi-driver chart version (3.1.4 is driver v2.1.3)."
  type        = string
  default     = "3.1.4"
}

variable "install_nvidia_device_plugin" {
  description = "Install the NVIDIA device plugin (NVIDIA/k8s-device-plugin chart), which advertises nvidia.com/gpu. Off: GPU AMIs and GPU operators usually bring it."
  type        = bool
  default     = false
}

variable "nvidia_device_plugin_chart_version" {
  description = "Pinned nvidia-device-plugin chart version."
  type        = string
  default     = "0.19.0"
}
