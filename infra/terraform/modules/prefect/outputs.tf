output "kubernetes_work_pool_name" {
  description = "Name of the kubernetes work pool, or null when not created."
  value       = var.create_kubernetes_work_pool ? prefect_work_pool.kubernetes[0].name : null
}

output "kubernetes_work_pool_id" {
  description = "ID of the kubernetes work pool, or null when not created."
  value       = var.create_kubernetes_work_pool ? prefect_work_pool.kubernetes[0].id : null
}

output "ecs_work_pool_name" {
  description = "Name of the ecs work pool, or null when not created."
  value       = var.create_ecs_work_pool ? prefect_work_pool.ecs[0].name : null
}

output "ecs_work_pool_id" {
  description = "ID of the ecs work pool, or null when not created."
  value       = var.create_ecs_work_pool ? prefect_work_pool.ecs[0].id : null
}

output "gpu_limit_name" {
  description = "Name of the global GPU concurrency limit."
  value       = prefect_global_concurrency_limit.gpu.name
}

output "gpu_limit" {
  description = "Size of the global GPU concurrency limit."
  value       = prefect_global_concurrency_limit.gpu.limit
}

output "gpu_type_limit_names" {
  description = "Names of the per-type GPU limits, keyed by GPU type."
  value       = { for type, limit in prefect_global_concurrency_limit.gpu_type : type => limit.name }
}

output "variable_names" {
  description = "Names of the Prefect variables created."
  value       = keys(prefect_variable.this)
}
