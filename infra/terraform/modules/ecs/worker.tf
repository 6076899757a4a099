################################################################################
# Prefect ECS worker: an ECS service (Fargate) polling the ecs work pool
#
# Its role grants what prefect-aws 0.7.12's ECS worker calls (prefect_aws/workers/
# ecs_worker.py): register, describe and deregister task definitions, run, describe and
# stop tasks (with tags: tag-on-create), read the flow task's log (stream_output), find
# the VPC's subnets when a run names none, and pass the flow tasks' roles to ECS.
# tests/infra/test_terraform.py compares this list with that source.
################################################################################

locals {
  worker_count = var.enable_prefect_worker ? 1 : 0
}

resource "aws_iam_role" "worker" {
  count = local.worker_count

  name_prefix        = "${var.name}-worker-"
  description        = "Prefect ECS worker of ${var.name}: starts the ecs work pool's flow runs as ECS tasks"
  assume_role_policy = data.aws_iam_policy_document.tasks_assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "worker" {
  statement {
    # Task definitions are registered per flow; these actions take no resource.
    sid = "ManageFlowTaskDefinitions"
    actions = [
      "ecs:RegisterTaskDefinition",
      "ecs:DescribeTaskDefinition",
      "ecs:DeregisterTaskDefinition",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "RunFlowTasksOnGpuflowCluster"
    actions   = ["ecs:RunTask"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid     = "WatchAndStopFlowTasks"
    actions = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = [
      "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*",
    ]
  }

  statement {
    sid     = "TagFlowResourcesOnCreate"
    actions = ["ecs:TagResource"]
    resources = [
      "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*",
      "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/*",
    ]

    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RegisterTaskDefinition", "RunTask"]
    }
  }

  statement {
    # DescribeVpcs and DescribeSubnets have no resource-level permissions.
    sid       = "FindFlowTaskSubnets"
    actions   = ["ec2:DescribeVpcs", "ec2:DescribeSubnets"]
    resources = ["*"]
  }

  statement {
    sid       = "StreamFlowTaskLogs"
    actions   = ["logs:GetLogEvents"]
    resources = ["${aws_cloudwatch_log_group.tasks.arn}:*"]
  }

  statement {
    sid       = "PassGpuflowRolesToFlowTasks"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.task.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  count = local.worker_count

  name   = "gpuflow-worker"
  role   = aws_iam_role.worker[0].id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_ecs_task_definition" "worker" {
  count = local.worker_count

  family                   = "${var.name}-prefect-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "512"
  memory                   = "1024"
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.worker[0].arn

  container_definitions = jsonencode([
    {
      name      = "worker"
      image     = var.prefect_worker_image
      essential = true
      command   = ["prefect", "worker", "start", "--pool", var.prefect_work_pool_name, "--type", "ecs"]
      environment = [
        { name = "PREFECT_API_URL", value = var.prefect_api_url },
      ]
      secrets = var.prefect_api_key_secret_arn == null ? [] : [
        { name = "PREFECT_API_KEY", valueFrom = var.prefect_api_key_secret_arn },
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.tasks.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "prefect-worker"
        }
      }
    }
  ])

  lifecycle {
    precondition {
      condition     = var.prefect_api_url != null && length(var.worker_subnet_ids) > 0
      error_message = "enable_prefect_worker needs prefect_api_url and worker_subnet_ids."
    }
  }

  tags = local.tags
}

resource "aws_ecs_service" "worker" {
  count = local.worker_count

  name            = "${var.name}-prefect-worker"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.worker[0].arn
  desired_count   = 1
  launch_type     = "FARGATE"

  network_configuration {
    subnets          = var.worker_subnet_ids
    security_groups  = aws_security_group.tasks[*].id
    assign_public_ip = false
  }

  tags = local.tags
}
