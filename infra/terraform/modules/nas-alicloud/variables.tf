variable "name" {
  description = "Name prefix for the file system description and the access group."
  type        = string
  default     = "gpuflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3-40 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "storage_type" {
  description = "Storage type of the General-purpose NAS file system: Performance for environments and models read at job start, Capacity for cheaper bulk storage."
  type        = string
  default     = "Performance"

  validation {
    condition     = contains(["Performance", "Capacity", "Premium"], var.storage_type)
    error_message = "storage_type must be Performance, Capacity or Premium."
  }
}

variable "zone_id" {
  description = "Zone of the file system. Null lets Alibaba Cloud pick one in the region of the provider."
  type        = string
  default     = null
}

variable "kms_key_id" {
  description = "ID of a KMS key (BYOK) to encrypt the file system with. Null encrypts with the NAS-managed key."
  type        = string
  default     = null
}

variable "vswitch_ids" {
  description = "VSwitches of the ACK cluster's VPC to create one mount target in each."
  type        = list(string)

  validation {
    condition     = length(var.vswitch_ids) > 0 && alltrue([for v in var.vswitch_ids : can(regex("^vsw-[0-9a-z]+$", v))])
    error_message = "vswitch_ids must hold at least one vSwitch id (vsw-...)."
  }
}

variable "security_group_id" {
  description = "Security group applied to the mount targets (optional)."
  type        = string
  default     = null

  validation {
    condition     = var.security_group_id == null || can(regex("^sg-[0-9a-z]+$", var.security_group_id))
    error_message = "security_group_id must look like sg-..."
  }
}

variable "allowed_cidr_blocks" {
  description = "CIDR blocks (the cluster's node and pod ranges) allowed read-write NFS access through the access group."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidr_blocks) > 0 && alltrue([for c in var.allowed_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "allowed_cidr_blocks must hold at least one valid CIDR block other than 0.0.0.0/0."
  }
}

variable "user_access_type" {
  description = "How the access rules map client users: root_squash keeps a container running as root from owning files as root."
  type        = string
  default     = "root_squash"

  validation {
    condition     = contains(["no_squash", "root_squash", "all_squash"], var.user_access_type)
    error_message = "user_access_type must be no_squash, root_squash or all_squash."
  }
}

variable "root_path" {
  description = "Directory of the file system under which the alicloud-nas-subpath StorageClass creates one subdirectory per volume."
  type        = string
  default     = "/gpuflow"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]*$", var.root_path)) && !strcontains(var.root_path, "..")
    error_message = "root_path must be an absolute path without '..'."
  }
}

variable "storage_class_name" {
  description = "Name of the StorageClass that ACK clusters use for subpath volumes on this file system."
  type        = string
  default     = "alicloud-nas-subpath"
}

variable "tags" {
  description = "Tags added to every taggable resource, merged over the module's defaults."
  type        = map(string)
  default     = {}
}
