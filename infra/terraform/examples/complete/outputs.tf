output "efs_file_system_id" {
  description = "ID of the EFS file system."
  value       = module.nas.file_system_id
}

output "efs_volume_handle" {
  description = "volumeHandle of the EFS PersistentVolume (fs-id::fsap-id)."
  value       = module.nas.volume_handle
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

output "nas_mount_path" {
  description = "Path of the NAS in every pod and task."
  value       = var.nas_mount_path
}

output "ecs_cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = module.ecs.cluster_arn
}

output "ecs_task_role_arn" {
  description = "Task role of gpuflow's ECS tasks."
  value       = module.ecs.task_role_arn
}

output "ecs_task_execution_role_arn" {
  description = "Execution role of gpuflow's ECS tasks."
  value       = module.ecs.task_execution_role_arn
}

output "ecs_gpu_capacity_provider_name" {
  description = "Capacity provider GPU tasks must ask for."
  value       = module.ecs.gpu_capacity_provider_name
}

output "ecr_repository_url" {
  description = "Repository to push gpuflow's images to."
  value       = module.ecs.ecr_repository_url
}

output "kubernetes_work_pool_name" {
  description = "Prefect kubernetes work pool."
  value       = module.prefect.kubernetes_work_pool_name
}

output "ecs_work_pool_name" {
  description = "Prefect ecs work pool."
  value       = module.prefect.ecs_work_pool_name
}

output "gpu_limit_name" {
  description = "Prefect global concurrency limit that caps GPUs."
  value       = module.prefect.gpu_limit_name
}
