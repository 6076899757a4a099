variable "name" {
  description = "Name prefix for every resource of this module (file system, security group, access point)."
  type        = string
  default     = "gpuflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3-40 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "vpc_id" {
  description = "ID of the VPC the mount targets and their security group live in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

variable "subnet_ids" {
  description = "Subnets to create one EFS mount target in each (one per availability zone, where the GPU nodes and Fargate tasks run)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must hold at least one subnet id (subnet-...)."
  }
}

variable "allowed_cidr_blocks" {
  description = "IPv4 CIDR blocks allowed to reach the file system over NFS (TCP 2049). Nothing else is opened."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.allowed_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "allowed_cidr_blocks must be valid CIDR blocks and must not be 0.0.0.0/0."
  }
}

variable "allowed_security_group_ids" {
  description = "Security groups (EKS nodes, ECS tasks and instances) allowed to reach the file system over NFS (TCP 2049)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.allowed_security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "allowed_security_group_ids must hold security group ids (sg-...)."
  }
}

variable "kms_key_arn" {
  description = "ARN of an existing customer managed KMS key to encrypt the file system with. Null creates a dedicated key with rotation on."
  type        = string
  default     = null
}

variable "kms_key_deletion_window_in_days" {
  description = "Waiting period before a key created by this module is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_in_days >= 7 && var.kms_key_deletion_window_in_days <= 30
    error_message = "kms_key_deletion_window_in_days must be between 7 and 30."
  }
}

variable "performance_mode" {
  description = "EFS performance mode. generalPurpose has the lowest latency for the many small files of Python environments."
  type        = string
  default     = "generalPurpose"

  validation {
    condition     = contains(["generalPurpose", "maxIO"], var.performance_mode)
    error_message = "performance_mode must be generalPurpose or maxIO."
  }
}

variable "throughput_mode" {
  description = "EFS throughput mode. elastic suits bursty model downloads and environment builds."
  type        = string
  default     = "elastic"

  validation {
    condition     = contains(["bursting", "provisioned", "elastic"], var.throughput_mode)
    error_message = "throughput_mode must be bursting, provisioned or elastic."
  }
}

variable "provisioned_throughput_in_mibps" {
  description = "Throughput in MiB/s when throughput_mode is provisioned; ignored otherwise."
  type        = number
  default     = null

  validation {
    condition     = var.provisioned_throughput_in_mibps == null || try(var.provisioned_throughput_in_mibps > 0, false)
    error_message = "provisioned_throughput_in_mibps must be positive when set."
  }
}

variable "transition_to_ia" {
  description = "Move files not read for this long to Infrequent Access (models and environments of old job versions). Null disables it."
  type        = string
  default     = "AFTER_30_DAYS"

  validation {
    condition = var.transition_to_ia == null || contains([
      "AFTER_1_DAY", "AFTER_7_DAYS", "AFTER_14_DAYS", "AFTER_30_DAYS",
      "AFTER_60_DAYS", "AFTER_90_DAYS", "AFTER_180_DAYS", "AFTER_270_DAYS", "AFTER_365_DAYS",
    ], var.transition_to_ia)
    error_message = "transition_to_ia must be one of AFTER_1_DAY ... AFTER_365_DAYS, or null."
  }
}

variable "transition_to_primary_storage_class" {
  description = "Move a file back to Standard storage on its first access after it went to Infrequent Access. Null disables it."
  type        = string
  default     = "AFTER_1_ACCESS"

  validation {
    condition     = var.transition_to_primary_storage_class == null || var.transition_to_primary_storage_class == "AFTER_1_ACCESS"
    error_message = "transition_to_primary_storage_class must be AFTER_1_ACCESS or null."
  }
}

variable "enable_backup" {
  description = "Turn on AWS Backup's automatic backups of the file system."
  type        = bool
  default     = true
}

variable "root_directory" {
  description = "Directory of the file system that gpuflow's access point exposes as its root (models/, envs/, workspaces/ live under it)."
  type        = string
  default     = "/gpuflow"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]*$", var.root_directory)) && !strcontains(var.root_directory, "..")
    error_message = "root_directory must be an absolute path without '..'."
  }
}

variable "posix_uid" {
  description = "POSIX user id every NFS request through the access point runs as (the uid of gpuflow's containers)."
  type        = number
  default     = 1000

  validation {
    condition     = var.posix_uid >= 0 && floor(var.posix_uid) == var.posix_uid
    error_message = "posix_uid must be a non-negative integer."
  }
}

variable "posix_gid" {
  description = "POSIX group id every NFS request through the access point runs as."
  type        = number
  default     = 1000

  validation {
    condition     = var.posix_gid >= 0 && floor(var.posix_gid) == var.posix_gid
    error_message = "posix_gid must be a non-negative integer."
  }
}

variable "root_directory_permissions" {
  description = "Octal permissions the access point gives root_directory when it creates it."
  type        = string
  default     = "0775"

  validation {
    condition     = can(regex("^0?[0-7]{3}$", var.root_directory_permissions))
    error_message = "root_directory_permissions must be an octal mode such as 0775."
  }
}

variable "tags" {
  description = "Tags added to every taggable resource, merged over the module's defaults."
  type        = map(string)
  default     = {}
}
