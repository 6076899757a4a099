output "nas_file_system_id" {
  description = "ID of the NAS file system."
  value       = module.nas.file_system_id
}

output "nas_server" {
  description = "server parameter of the alicloud-nas-subpath StorageClass."
  value       = module.nas.server
}

output "namespace" {
  description = "Kubernetes namespace of gpuflow."
  value       = module.kubernetes.namespace
}

output "pvc_name" {
  description = "ReadWriteMany claim every flow pod and job replica mounts."
  value       = module.kubernetes.pvc_name
}

output "service_account_name" {
  description = "Service account of the flow pods."
  value       = module.kubernetes.service_account_name
}

output "kubernetes_work_pool_name" {
  description = "Prefect kubernetes work pool."
  value       = module.prefect.kubernetes_work_pool_name
}

output "gpu_limit_name" {
  description = "Prefect global concurrency limit that caps GPUs."
  value       = module.prefect.gpu_limit_name
}
