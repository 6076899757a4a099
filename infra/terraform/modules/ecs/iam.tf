################################################################################
# Task execution role: pull the image, write logs, read the task's secrets
################################################################################

data "aws_iam_policy_document" "tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  description        = "ECS task execution role of ${var.name}: image pull, logs, task secrets"
  assume_role_policy = data.aws_iam_policy_document.tasks_assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid = "PullGpuflowImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.this.arn]
  }

  statement {
    # GetAuthorizationToken has no resource-level permissions: "*" is the only valid resource.
    sid       = "AuthenticateToEcr"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "WriteTaskLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.tasks.arn}:*"]
  }

  dynamic "statement" {
    for_each = length(var.secret_arns) > 0 ? [var.secret_arns] : []

    content {
      sid       = "ReadTaskSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = statement.value
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "gpuflow-execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

################################################################################
# Task role: what gpuflow's code may do, scoped to gpuflow's prefixes and cluster
################################################################################

locals {
  bucket_arn = var.s3_bucket_name == null ? null : "arn:${local.partition}:s3:::${var.s3_bucket_name}"

  efs_file_system_arn  = var.efs_file_system_id == null ? null : "arn:${local.partition}:elasticfilesystem:${local.region}:${local.account_id}:file-system/${var.efs_file_system_id}"
  efs_access_point_arn = var.efs_access_point_id == null ? null : "arn:${local.partition}:elasticfilesystem:${local.region}:${local.account_id}:access-point/${var.efs_access_point_id}"
}

resource "aws_iam_role" "task" {
  name_prefix        = "${var.name}-task-"
  description        = "ECS task role of ${var.name}: gpuflow's S3 prefixes, its EFS access point, its logs and its cluster"
  assume_role_policy = data.aws_iam_policy_document.tasks_assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "task" {
  # Following a job's log stream. The group is this module's: gpuflow does not create it.
  statement {
    sid       = "ReadGpuflowJobLogs"
    actions   = ["logs:GetLogEvents"]
    resources = ["${aws_cloudwatch_log_group.tasks.arn}:*"]
  }

  dynamic "statement" {
    for_each = local.bucket_arn == null ? [] : [local.bucket_arn]

    content {
      sid       = "ListGpuflowPrefixes"
      actions   = ["s3:ListBucket"]
      resources = [statement.value]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = [for prefix in var.s3_prefixes : "${prefix}*"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.bucket_arn == null ? [] : [local.bucket_arn]

    content {
      sid = "ReadWriteGpuflowObjects"
      actions = [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
      ]
      resources = [for prefix in var.s3_prefixes : "${statement.value}/${prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = local.efs_file_system_arn == null ? [] : [local.efs_file_system_arn]

    content {
      sid       = "MountGpuflowAccessPoint"
      actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "elasticfilesystem:AccessPointArn"
        values   = [local.efs_access_point_arn]
      }
    }
  }

  dynamic "statement" {
    for_each = var.allow_task_submission ? [aws_ecs_cluster.this.arn] : []

    content {
      sid       = "RunJobTasksOnGpuflowCluster"
      actions   = ["ecs:RunTask"]
      resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${var.name}-*"]

      condition {
        test     = "ArnEquals"
        variable = "ecs:cluster"
        values   = [statement.value]
      }
    }
  }

  dynamic "statement" {
    for_each = var.allow_task_submission ? [aws_ecs_cluster.this.name] : []

    content {
      sid     = "WatchAndStopJobTasks"
      actions = ["ecs:DescribeTasks", "ecs:StopTask"]
      resources = [
        "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${statement.value}/*",
      ]
    }
  }

  dynamic "statement" {
    for_each = var.allow_task_submission ? [aws_ecs_cluster.this.arn] : []

    content {
      # The reconciler's sweep for job tasks whose flow run is gone.
      sid       = "ListJobTasks"
      actions   = ["ecs:ListTasks"]
      resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:container-instance/${aws_ecs_cluster.this.name}/*"]

      condition {
        test     = "ArnEquals"
        variable = "ecs:cluster"
        values   = [statement.value]
      }
    }
  }

  dynamic "statement" {
    for_each = var.allow_task_submission ? [aws_ecs_cluster.this.name] : []

    content {
      # RegisterTaskDefinition and RunTask send tags: tag-on-create needs ecs:TagResource,
      # only for those two creating actions.
      sid     = "TagJobResourcesOnCreate"
      actions = ["ecs:TagResource"]
      resources = [
        "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${statement.value}/*",
        "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${var.name}-*:*",
      ]

      condition {
        test     = "StringEquals"
        variable = "ecs:CreateAction"
        values   = ["RegisterTaskDefinition", "RunTask"]
      }
    }
  }

  dynamic "statement" {
    for_each = var.allow_task_submission ? [1] : []

    content {
      # Task definition families are registered per job version; these actions take no resource.
      sid       = "RegisterJobTaskDefinitions"
      actions   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = var.allow_task_submission ? [1] : []

    content {
      sid       = "PassGpuflowRolesToJobTasks"
      actions   = ["iam:PassRole"]
      resources = [aws_iam_role.execution.arn, aws_iam_role.task.arn]

      condition {
        test     = "StringEquals"
        variable = "iam:PassedToService"
        values   = ["ecs-tasks.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "gpuflow-task"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}
