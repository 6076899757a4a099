variable "name" {
  description = "Name of the ECS cluster and prefix of every resource of this module."
  type        = string
  default     = "gpuflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every taggable resource, merged over the module's defaults."
  type        = map(string)
  default     = {}
}

################################################################################
# Cluster and capacity
################################################################################

variable "container_insights" {
  description = "Container Insights level of the cluster: enhanced, enabled or disabled."
  type        = string
  default     = "enabled"

  validation {
    condition     = contains(["enhanced", "enabled", "disabled"], var.container_insights)
    error_message = "container_insights must be enhanced, enabled or disabled."
  }
}

variable "fargate_weight" {
  description = "Weight of FARGATE in the cluster's default capacity provider strategy (CPU work such as postprocessing and flow tasks)."
  type        = number
  default     = 1

  validation {
    condition     = var.fargate_weight >= 0 && var.fargate_weight <= 1000
    error_message = "fargate_weight must be between 0 and 1000."
  }
}

variable "fargate_spot_weight" {
  description = "Weight of FARGATE_SPOT in the cluster's default capacity provider strategy (0 keeps it available but unused by default)."
  type        = number
  default     = 0

  validation {
    condition     = var.fargate_spot_weight >= 0 && var.fargate_spot_weight <= 1000
    error_message = "fargate_spot_weight must be between 0 and 1000."
  }
}

variable "enable_gpu_capacity" {
  description = "Create the EC2 GPU capacity provider (launch template on the ECS GPU-optimized AMI, Auto Scaling group, managed scaling). Fargate has no GPUs."
  type        = bool
  default     = false
}

variable "gpu_ami_ssm_parameter" {
  description = "Public SSM parameter holding the ECS GPU-optimized AMI id (Amazon Linux 2023; Amazon Linux 2 support ended 2026-06-30)."
  type        = string
  default     = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"

  validation {
    condition     = startswith(var.gpu_ami_ssm_parameter, "/aws/service/ecs/optimized-ami/")
    error_message = "gpu_ami_ssm_parameter must be one of the public /aws/service/ecs/optimized-ami/... parameters."
  }

  validation {
    condition     = !startswith(var.gpu_ami_ssm_parameter, "/aws/service/ecs/optimized-ami/amazon-linux-2/")
    error_message = "gpu_ami_ssm_parameter names an Amazon Linux 2 AMI, whose support ended 2026-06-30: use /aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id."
  }
}

variable "gpu_instance_type" {
  description = "EC2 instance type of the GPU capacity (e.g. g5.2xlarge, g6.12xlarge, p4d.24xlarge)."
  type        = string
  default     = "g5.2xlarge"

  validation {
    condition     = can(regex("^(g[0-9][a-z]*|p[0-9][a-z]*)\\.[0-9]*x?large$", var.gpu_instance_type))
    error_message = "gpu_instance_type must be a GPU instance type of the g or p families."
  }
}

variable "gpu_subnet_ids" {
  description = "Private subnets the GPU instances are launched in. Required when enable_gpu_capacity is true."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.gpu_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "gpu_subnet_ids must hold subnet ids (subnet-...)."
  }
}

variable "gpu_security_group_ids" {
  description = "Security groups of the GPU instances (they need NFS to the NAS and HTTPS out)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.gpu_security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "gpu_security_group_ids must hold security group ids (sg-...)."
  }
}

variable "gpu_min_size" {
  description = "Minimum number of GPU instances (0 scales to zero when no job runs)."
  type        = number
  default     = 0

  validation {
    condition     = var.gpu_min_size >= 0
    error_message = "gpu_min_size must be at least 0."
  }
}

variable "gpu_max_size" {
  description = "Maximum number of GPU instances: keep it in line with the Prefect 'gpu' limit."
  type        = number
  default     = 2

  validation {
    condition     = var.gpu_max_size >= 1
    error_message = "gpu_max_size must be at least 1."
  }
}

variable "gpu_target_capacity" {
  description = "Managed scaling target utilization (percent) of the GPU capacity provider."
  type        = number
  default     = 100

  validation {
    condition     = var.gpu_target_capacity >= 1 && var.gpu_target_capacity <= 100
    error_message = "gpu_target_capacity must be between 1 and 100."
  }
}

variable "gpu_root_volume_size" {
  description = "Size in GiB of the GPU instances' root volume (container images of GPU jobs are large)."
  type        = number
  default     = 200

  validation {
    condition     = var.gpu_root_volume_size >= 30
    error_message = "gpu_root_volume_size must be at least 30 GiB."
  }
}

################################################################################
# Logs, encryption, images
################################################################################

variable "log_group_name" {
  description = "CloudWatch log group of gpuflow's job tasks: the ECS block's log_group (its default is /gpuflow/jobs), created here, so the block's create_log_group stays off."
  type        = string
  default     = "/gpuflow/jobs"

  validation {
    condition     = can(regex("^[.\\-_/#A-Za-z0-9]{1,512}$", var.log_group_name))
    error_message = "log_group_name must be 1-512 characters of letters, digits and . - _ / #."
  }
}

variable "log_retention_in_days" {
  description = "Retention of the CloudWatch log group of gpuflow's tasks."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_in_days)
    error_message = "log_retention_in_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ... 3653)."
  }
}

variable "kms_key_arn" {
  description = "ARN of an existing customer managed KMS key for logs and images. Null creates one with rotation on."
  type        = string
  default     = null
}

variable "ecr_repository_name" {
  description = "Name of the ECR repository of gpuflow's images. Null uses the cluster name."
  type        = string
  default     = null

  validation {
    condition     = var.ecr_repository_name == null || can(regex("^[a-z0-9][a-z0-9._/-]{1,254}$", var.ecr_repository_name))
    error_message = "ecr_repository_name must be a valid ECR repository name."
  }
}

variable "ecr_untagged_image_expiry_days" {
  description = "Untagged images older than this are expired from the repository."
  type        = number
  default     = 14

  validation {
    condition     = var.ecr_untagged_image_expiry_days >= 1
    error_message = "ecr_untagged_image_expiry_days must be at least 1."
  }
}

################################################################################
# What the tasks may reach
################################################################################

variable "s3_bucket_name" {
  description = "Bucket of gpuflow's inputs and outputs. Null grants no S3 access."
  type        = string
  default     = null

  validation {
    condition     = var.s3_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.s3_bucket_name))
    error_message = "s3_bucket_name must be a valid S3 bucket name."
  }
}

variable "s3_prefixes" {
  description = "Key prefixes of the bucket the task role may read and write (e.g. gpuflow/inputs/, gpuflow/outputs/). Nothing outside them."
  type        = list(string)
  default     = ["gpuflow/"]

  validation {
    condition     = length(var.s3_prefixes) > 0 && alltrue([for p in var.s3_prefixes : can(regex("^[A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]*/$", p))])
    error_message = "s3_prefixes must be non-empty key prefixes that end with '/' and do not start with '/'."
  }
}

variable "efs_file_system_id" {
  description = "EFS file system the tasks mount (the nas module's file_system_id). Null grants no EFS access."
  type        = string
  default     = null

  validation {
    condition     = var.efs_file_system_id == null || can(regex("^fs-[0-9a-f]+$", var.efs_file_system_id))
    error_message = "efs_file_system_id must look like fs-0123abcd."
  }
}

variable "efs_access_point_id" {
  description = "Access point the tasks must mount through (the nas module's access_point_id). Required with efs_file_system_id."
  type        = string
  default     = null

  validation {
    condition     = var.efs_access_point_id == null || can(regex("^fsap-[0-9a-f]+$", var.efs_access_point_id))
    error_message = "efs_access_point_id must look like fsap-0123abcd."
  }
}

variable "nas_mount_path" {
  description = "Path the NAS is mounted at in every task (containerPath). The same in every pod and task: uv environments are not relocatable."
  type        = string
  default     = "/mnt/nas"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]+$", var.nas_mount_path)) && !strcontains(var.nas_mount_path, "..") && !endswith(var.nas_mount_path, "/")
    error_message = "nas_mount_path must be an absolute path without '..' or a trailing slash."
  }
}

variable "secret_arns" {
  description = "Secrets Manager secrets (e.g. the Prefect API key) the execution role may read to inject as task secrets."
  type        = list(string)
  default     = []
}

variable "allow_task_submission" {
  description = "Let the task role run, describe and stop tasks on this cluster (a flow task submits its GPU job as another ECS task) and pass the two roles to them."
  type        = bool
  default     = true
}

variable "vpc_id" {
  description = "VPC of the tasks. When set, the module creates a security group for gpuflow's awsvpc tasks and GPU instances (HTTPS out, NFS to the VPC). Null creates none."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null || can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

################################################################################
# Prefect ECS worker (optional): an ECS service that runs the ecs work pool's flows
################################################################################

variable "enable_prefect_worker" {
  description = "Run a Prefect ECS worker as an ECS service on this cluster (Fargate), polling prefect_work_pool_name and starting each flow run as an ECS task."
  type        = bool
  default     = false
}

variable "prefect_worker_image" {
  description = "Image of the worker: Prefect with prefect-aws (the version gpuflow's template was rendered with, prefect-aws 0.7.12)."
  type        = string
  default     = "prefecthq/prefect-aws:0.7.12-python3.12"
}

variable "prefect_work_pool_name" {
  description = "The ecs work pool the worker polls (gpuflow bootstrap names it gpuflow-ecs)."
  type        = string
  default     = "gpuflow-ecs"
}

variable "prefect_api_url" {
  description = "PREFECT_API_URL of the worker (a Prefect server, or a Prefect Cloud workspace URL). Required with enable_prefect_worker."
  type        = string
  default     = null
}

variable "prefect_api_key_secret_arn" {
  description = "Secrets Manager secret holding the worker's PREFECT_API_KEY (null for a server without auth). Add it to secret_arns so the execution role may read it."
  type        = string
  default     = null
}

variable "worker_subnet_ids" {
  description = "Subnets of the worker task (private, with a route to the Prefect API). Required with enable_prefect_worker."
  type        = list(string)
  default     = []
}
