data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

locals {
  tags = merge(
    {
      "gpuflow:component" = "ecs"
      "managed-by"        = "terraform"
    },
    var.tags,
  )

  partition  = data.aws_partition.current.partition
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.region

  log_group_name      = var.log_group_name
  exec_log_group_name = "/gpuflow/${var.name}/exec"
  log_group_arns = [
    "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}",
    "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.exec_log_group_name}",
  ]

  create_kms_key = var.kms_key_arn == null
  kms_key_arn    = local.create_kms_key ? aws_kms_key.this[0].arn : var.kms_key_arn

  gpu_capacity_provider = "${var.name}-gpu"
}

################################################################################
# Encryption key for logs, exec sessions and images
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
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid    = "CloudWatchLogsUsesKeyForGpuflowLogGroups"
    effect = "Allow"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = local.log_group_arns
    }
  }
}

resource "aws_kms_key" "this" {
  count = local.create_kms_key ? 1 : 0

  description             = "Encrypts the logs, exec sessions and images of the ${var.name} ECS cluster"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms[0].json

  tags = merge(local.tags, { Name = "${var.name}-ecs" })
}

resource "aws_kms_alias" "this" {
  count = local.create_kms_key ? 1 : 0

  name          = "alias/${var.name}-ecs"
  target_key_id = aws_kms_key.this[0].key_id
}

################################################################################
# Logs
################################################################################

resource "aws_cloudwatch_log_group" "tasks" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_in_days
  kms_key_id        = local.kms_key_arn

  tags = local.tags
}

resource "aws_cloudwatch_log_group" "exec" {
  name              = local.exec_log_group_name
  retention_in_days = var.log_retention_in_days
  kms_key_id        = local.kms_key_arn

  tags = local.tags
}

################################################################################
# Cluster
################################################################################

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights
  }

  configuration {
    execute_command_configuration {
      kms_key_id = local.kms_key_arn
      logging    = "OVERRIDE"

      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.exec.name
      }
    }
  }

  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name = aws_ecs_cluster.this.name

  capacity_providers = concat(
    ["FARGATE", "FARGATE_SPOT"],
    var.enable_gpu_capacity ? [aws_ecs_capacity_provider.gpu[0].name] : [],
  )

  # Tasks that name no strategy are CPU work: GPU tasks ask for the GPU provider explicitly.
  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = var.fargate_weight
    base              = 0
  }

  dynamic "default_capacity_provider_strategy" {
    for_each = var.fargate_spot_weight > 0 ? [var.fargate_spot_weight] : []

    content {
      capacity_provider = "FARGATE_SPOT"
      weight            = default_capacity_provider_strategy.value
    }
  }
}

################################################################################
# GPU capacity (EC2): ECS GPU-optimized AMI, Auto Scaling group, managed scaling
################################################################################

data "aws_ssm_parameter" "gpu_ami" {
  count = var.enable_gpu_capacity ? 1 : 0

  name = var.gpu_ami_ssm_parameter
}

data "aws_iam_policy_document" "instance_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  count = var.enable_gpu_capacity ? 1 : 0

  name_prefix        = "${var.name}-gpu-"
  description        = "ECS container instances of the ${var.name} GPU capacity provider"
  assume_role_policy = data.aws_iam_policy_document.instance_assume.json

  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "instance" {
  for_each = var.enable_gpu_capacity ? toset([
    "service-role/AmazonEC2ContainerServiceforEC2Role",
    "AmazonSSMManagedInstanceCore",
  ]) : toset([])

  role       = aws_iam_role.instance[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

resource "aws_iam_instance_profile" "instance" {
  count = var.enable_gpu_capacity ? 1 : 0

  name_prefix = "${var.name}-gpu-"
  role        = aws_iam_role.instance[0].name

  tags = local.tags
}

resource "aws_launch_template" "gpu" {
  count = var.enable_gpu_capacity ? 1 : 0

  name_prefix            = "${var.name}-gpu-"
  description            = "ECS GPU-optimized instances of the ${var.name} cluster"
  image_id               = data.aws_ssm_parameter.gpu_ami[0].insecure_value
  instance_type          = var.gpu_instance_type
  ebs_optimized          = true
  update_default_version = true
  vpc_security_group_ids = concat(var.gpu_security_group_ids, aws_security_group.tasks[*].id)

  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'CONFIG'
    ECS_CLUSTER=${var.name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_ENABLE_CONTAINER_METADATA=true
    ECS_CONTAINER_STOP_TIMEOUT=120s
    CONFIG
  EOT
  )

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance[0].arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size = var.gpu_root_volume_size
      volume_type = "gp3"
      # The account's EBS key: a customer key would need a grant for the Auto Scaling service role.
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-gpu" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.name}-gpu" })
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "gpu" {
  count = var.enable_gpu_capacity ? 1 : 0

  name_prefix         = "${var.name}-gpu-"
  min_size            = var.gpu_min_size
  max_size            = var.gpu_max_size
  vpc_zone_identifier = var.gpu_subnet_ids
  health_check_type   = "EC2"

  # Managed termination protection: ECS decides which instance is idle enough to go.
  protect_from_scale_in = true

  launch_template {
    id      = aws_launch_template.gpu[0].id
    version = "$Latest"
  }

  dynamic "tag" {
    for_each = merge(local.tags, { AmazonECSManaged = "true", Name = "${var.name}-gpu" })

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # Managed scaling owns the desired capacity.
    ignore_changes = [desired_capacity]

    precondition {
      condition     = length(var.gpu_subnet_ids) > 0
      error_message = "gpu_subnet_ids is required when enable_gpu_capacity is true."
    }

    precondition {
      condition     = length(var.gpu_security_group_ids) > 0 || var.vpc_id != null
      error_message = "GPU instances need a security group: set gpu_security_group_ids or vpc_id."
    }

    precondition {
      condition     = var.gpu_min_size <= var.gpu_max_size
      error_message = "gpu_min_size must not exceed gpu_max_size."
    }
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  count = var.enable_gpu_capacity ? 1 : 0

  name = local.gpu_capacity_provider

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu[0].arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = var.gpu_target_capacity
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = var.gpu_max_size
    }
  }

  tags = local.tags
}

################################################################################
# Images
################################################################################

resource "aws_ecr_repository" "this" {
  name                 = coalesce(var.ecr_repository_name, var.name)
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = local.kms_key_arn
  }

  tags = local.tags
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name

  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Expire untagged images after ${var.ecr_untagged_image_expiry_days} days"
      selection = {
        tagStatus   = "untagged"
        countType   = "sinceImagePushed"
        countUnit   = "days"
        countNumber = var.ecr_untagged_image_expiry_days
      }
      action = {
        type = "expire"
      }
    }]
  })
}

################################################################################
# Network identity of the tasks: HTTPS out (S3, ECR, Prefect API), NFS to the VPC
################################################################################

data "aws_vpc" "this" {
  count = var.vpc_id == null ? 0 : 1

  id = var.vpc_id
}

resource "aws_security_group" "tasks" {
  count = var.vpc_id == null ? 0 : 1

  name_prefix = "${var.name}-tasks-"
  description = "gpuflow ECS tasks and GPU instances: HTTPS out, NFS to the NAS in the VPC, nothing in"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-tasks" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "https" {
  count = var.vpc_id == null ? 0 : 1

  security_group_id = aws_security_group.tasks[0].id
  description       = "HTTPS to S3, ECR, CloudWatch Logs and the Prefect API"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "nfs" {
  count = var.vpc_id == null ? 0 : 1

  security_group_id = aws_security_group.tasks[0].id
  description       = "NFS to the NAS mount targets"
  ip_protocol       = "tcp"
  from_port         = 2049
  to_port           = 2049
  cidr_ipv4         = data.aws_vpc.this[0].cidr_block

  tags = local.tags
}
