output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster (the ecs work pool's cluster)."
  value       = aws_ecs_cluster.this.arn
}

output "capacity_providers" {
  description = "Capacity providers attached to the cluster."
  value       = aws_ecs_cluster_capacity_providers.this.capacity_providers
}

output "gpu_capacity_provider_name" {
  description = "Name of the EC2 GPU capacity provider that GPU tasks must ask for, or null when disabled."
  value       = var.enable_gpu_capacity ? aws_ecs_capacity_provider.gpu[0].name : null
}

output "gpu_autoscaling_group_name" {
  description = "Name of the GPU Auto Scaling group, or null when disabled."
  value       = var.enable_gpu_capacity ? aws_autoscaling_group.gpu[0].name : null
}

output "task_execution_role_arn" {
  description = "ARN of the task execution role (executionRoleArn of gpuflow's task definitions)."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "ARN of the task role (taskRoleArn of gpuflow's task definitions)."
  value       = aws_iam_role.task.arn
}

output "log_group_name" {
  description = "CloudWatch log group of gpuflow's tasks (awslogs-group)."
  value       = aws_cloudwatch_log_group.tasks.name
}

output "ecr_repository_url" {
  description = "URL of the ECR repository of gpuflow's images."
  value       = aws_ecr_repository.this.repository_url
}

output "kms_key_arn" {
  description = "ARN of the KMS key of logs, exec sessions and images."
  value       = local.kms_key_arn
}

output "nas_mount_path" {
  description = "containerPath of the NAS volume in every task."
  value       = var.nas_mount_path
}

output "efs_volume" {
  description = "The NAS volume for gpuflow's task definitions (name, EFS volume configuration through the access point with TLS and IAM), or null without EFS."
  value = var.efs_file_system_id == null ? null : {
    name           = "gpuflow-nas"
    container_path = var.nas_mount_path
    efs_volume_configuration = {
      fileSystemId      = var.efs_file_system_id
      transitEncryption = "ENABLED"
      authorizationConfig = {
        accessPointId = var.efs_access_point_id
        iam           = "ENABLED"
      }
    }
  }
}

output "tasks_security_group_id" {
  description = "Security group of gpuflow's awsvpc tasks (allow it on the NAS), or null when vpc_id is not set."
  value       = try(aws_security_group.tasks[0].id, null)
}

output "prefect_worker_service_name" {
  description = "ECS service of the Prefect ECS worker (null without enable_prefect_worker)."
  value       = one(aws_ecs_service.worker[*].name)
}
