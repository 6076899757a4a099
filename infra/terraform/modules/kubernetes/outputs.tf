output "namespace" {
  description = "Namespace of the flow pods, PyTorchJobs and worker."
  value       = local.namespace
}

output "pvc_name" {
  description = "Name of the ReadWriteMany NAS claim to mount in every flow pod and job replica."
  value       = kubernetes_persistent_volume_claim_v1.nas.metadata[0].name
}

output "storage_class_name" {
  description = "StorageClass of the NAS volume."
  value       = local.storage_class_name
}

output "nas_mount_path" {
  description = "Path the NAS must be mounted at in every pod (also in the ConfigMap nas_config_map_name as GPUFLOW_NAS_ROOT)."
  value       = var.nas_mount_path
}

output "nas_config_map_name" {
  description = "ConfigMap holding GPUFLOW_NAS_ROOT and GPUFLOW_NAS_PVC, for envFrom in the base job template."
  value       = kubernetes_config_map_v1.nas.metadata[0].name
}

output "service_account_name" {
  description = "Service account the flow pods run as (serviceAccountName in the kubernetes base job template)."
  value       = kubernetes_service_account_v1.flow.metadata[0].name
}

output "gpu_quota" {
  description = "requests.nvidia.com/gpu hard limit of the namespace, or null when none."
  value       = var.gpu_quota
}

output "prefect_worker_release" {
  description = "Name of the prefect-worker Helm release, or null when the worker is not installed."
  value       = var.enable_prefect_worker ? helm_release.prefect_worker[0].name : null
}
