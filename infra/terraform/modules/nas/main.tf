data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

locals {
  tags = merge(
    {
      "gpuflow:component" = "nas"
      "managed-by"        = "terraform"
    },
    var.tags,
  )

  create_kms_key = var.kms_key_arn == null
  kms_key_arn    = local.create_kms_key ? aws_kms_key.this[0].arn : var.kms_key_arn

  # Keys known at plan time even when the subnets are created in the same apply.
  subnets = { for index, id in var.subnet_ids : tostring(index) => id }
}

################################################################################
# Encryption key
################################################################################

data "aws_iam_policy_document" "kms" {
  count = local.create_kms_key ? 1 : 0

  statement {
    sid       = "AccountAdministers"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "this" {
  count = local.create_kms_key ? 1 : 0

  description             = "Encrypts the ${var.name} EFS file system"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_key_deletion_window_in_days
  policy                  = data.aws_iam_policy_document.kms[0].json

  tags = merge(local.tags, { Name = "${var.name}-nas" })
}

resource "aws_kms_alias" "this" {
  count = local.create_kms_key ? 1 : 0

  name          = "alias/${var.name}-nas"
  target_key_id = aws_kms_key.this[0].key_id
}

################################################################################
# File system
################################################################################

resource "aws_efs_file_system" "this" {
  creation_token = "${var.name}-nas"

  encrypted  = true
  kms_key_id = local.kms_key_arn

  performance_mode                = var.performance_mode
  throughput_mode                 = var.throughput_mode
  provisioned_throughput_in_mibps = var.throughput_mode == "provisioned" ? var.provisioned_throughput_in_mibps : null

  dynamic "lifecycle_policy" {
    for_each = var.transition_to_ia == null ? [] : [var.transition_to_ia]

    content {
      transition_to_ia = lifecycle_policy.value
    }
  }

  dynamic "lifecycle_policy" {
    for_each = var.transition_to_primary_storage_class == null ? [] : [var.transition_to_primary_storage_class]

    content {
      transition_to_primary_storage_class = lifecycle_policy.value
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-nas" })

  lifecycle {
    precondition {
      condition     = var.throughput_mode != "provisioned" || var.provisioned_throughput_in_mibps != null
      error_message = "provisioned_throughput_in_mibps is required when throughput_mode is provisioned."
    }
  }
}

resource "aws_efs_backup_policy" "this" {
  file_system_id = aws_efs_file_system.this.id

  backup_policy {
    status = var.enable_backup ? "ENABLED" : "DISABLED"
  }
}

# Only TLS connections, and only through an access point: nothing mounts the raw root.
data "aws_iam_policy_document" "file_system" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.this.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid    = "MountThroughAccessPoint"
    effect = "Allow"
    actions = [
      "elasticfilesystem:ClientMount",
      "elasticfilesystem:ClientWrite",
    ]
    resources = [aws_efs_file_system.this.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.this.arn]
    }

    condition {
      test     = "Bool"
      variable = "elasticfilesystem:AccessedViaMountTarget"
      values   = ["true"]
    }
  }
}

resource "aws_efs_file_system_policy" "this" {
  file_system_id = aws_efs_file_system.this.id
  policy         = data.aws_iam_policy_document.file_system.json
}

################################################################################
# Network: mount targets and a security group that admits NFS only
################################################################################

resource "aws_security_group" "this" {
  name        = "${var.name}-nas"
  description = "NFS (TCP 2049) to the ${var.name} EFS mount targets from the listed sources only"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-nas" })

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = length(var.allowed_cidr_blocks) + length(var.allowed_security_group_ids) > 0
      error_message = "Give at least one NFS source: allowed_cidr_blocks or allowed_security_group_ids."
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "cidr" {
  for_each = toset(var.allowed_cidr_blocks)

  security_group_id = aws_security_group.this.id
  description       = "NFS from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 2049
  to_port           = 2049
  cidr_ipv4         = each.value

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "security_group" {
  for_each = { for index, id in var.allowed_security_group_ids : tostring(index) => id }

  security_group_id            = aws_security_group.this.id
  description                  = "NFS from security group ${each.value}"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = each.value

  tags = local.tags
}

# EFS takes one mount target per availability zone: two subnets in one AZ fail at apply.
data "aws_subnet" "mount" {
  for_each = local.subnets

  id = each.value
}

locals {
  subnet_zones = { for key, subnet in data.aws_subnet.mount : var.subnet_ids[tonumber(key)] => subnet.availability_zone }
}

resource "aws_efs_mount_target" "this" {
  for_each = local.subnets

  file_system_id  = aws_efs_file_system.this.id
  subnet_id       = each.value
  security_groups = [aws_security_group.this.id]

  lifecycle {
    precondition {
      condition     = length(distinct(values(local.subnet_zones))) == length(local.subnet_zones)
      error_message = "subnet_ids must lie in distinct availability zones (EFS allows one mount target per AZ); their zones: ${jsonencode(local.subnet_zones)}."
    }
  }
}

################################################################################
# Access point: gpuflow's root, one POSIX identity
################################################################################

resource "aws_efs_access_point" "this" {
  file_system_id = aws_efs_file_system.this.id

  posix_user {
    uid = var.posix_uid
    gid = var.posix_gid
  }

  root_directory {
    path = var.root_directory

    creation_info {
      owner_uid   = var.posix_uid
      owner_gid   = var.posix_gid
      permissions = var.root_directory_permissions
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-root" })
}
