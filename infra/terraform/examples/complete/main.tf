provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context
  }
}

provider "prefect" {
  endpoint       = var.prefect_api_url
  api_key        = var.prefect_api_key
  basic_auth_key = var.prefect_basic_auth_key
  account_id     = var.prefect_account_id
  workspace_id   = var.prefect_workspace_id
}

locals {
  tags = merge({ Project = "gpuflow" }, var.tags)

  # gpuflow ships its base job templates in the repository; a missing file means
  # Prefect's default template (the prefect module's null).
  base_job_templates_dir = coalesce(var.base_job_templates_dir, "${path.module}/../../../../deployments/base_job_templates")
  kubernetes_template    = "${local.base_job_templates_dir}/kubernetes.json"
  ecs_template           = "${local.base_job_templates_dir}/ecs.json"
}

################################################################################
# Shared storage: EFS, one access point for gpuflow's root
################################################################################

module "nas" {
  source = "../../modules/nas"

  name       = var.name
  vpc_id     = var.vpc_id
  subnet_ids = var.private_subnet_ids

  allowed_security_group_ids = concat(var.cluster_security_group_ids, [module.ecs.tasks_security_group_id])

  tags = var.tags
}

################################################################################
# Kubernetes: namespace, NAS claim, GPU quota, flow identity, optional worker
################################################################################

module "kubernetes" {
  source = "../../modules/kubernetes"

  name              = var.name
  namespace         = var.name
  nas_backend       = "efs"
  efs_volume_handle = module.nas.volume_handle
  nas_mount_path    = var.nas_mount_path
  gpu_quota         = var.gpu_count

  enable_prefect_worker        = var.enable_prefect_worker
  prefect_worker_chart_version = var.prefect_worker_chart_version
  work_pool_name               = module.prefect.kubernetes_work_pool_name
  # Decided on the account id, not on the (sensitive) key: count cannot use sensitive values.
  prefect_api_config   = var.prefect_account_id == null ? "server" : "cloud"
  prefect_api_url      = var.prefect_api_url
  prefect_account_id   = var.prefect_account_id
  prefect_workspace_id = var.prefect_workspace_id
  prefect_api_key      = var.prefect_api_key

  labels = { "app.kubernetes.io/instance" = var.name }
}

################################################################################
# ECS: Fargate for CPU work, EC2 GPU capacity for GPU jobs
################################################################################

module "ecs" {
  source = "../../modules/ecs"

  name   = var.name
  vpc_id = var.vpc_id

  enable_gpu_capacity = var.enable_gpu_capacity
  gpu_instance_type   = var.gpu_instance_type
  gpu_subnet_ids      = var.private_subnet_ids
  gpu_max_size        = var.gpu_max_instances

  s3_bucket_name      = var.s3_bucket_name
  s3_prefixes         = var.s3_prefixes
  efs_file_system_id  = module.nas.file_system_id
  efs_access_point_id = module.nas.access_point_id
  nas_mount_path      = var.nas_mount_path

  tags = var.tags
}

################################################################################
# Prefect: work pools with gpuflow's templates, GPU limits, variables
################################################################################

module "prefect" {
  source = "../../modules/prefect"

  workspace_id = var.prefect_workspace_id

  kubernetes_base_job_template = fileexists(local.kubernetes_template) ? file(local.kubernetes_template) : null
  ecs_base_job_template        = fileexists(local.ecs_template) ? file(local.ecs_template) : null

  gpu_count       = var.gpu_count
  gpu_type_counts = var.gpu_type_counts

  variables = merge(
    {
      gpuflow_nas_mount_path         = var.nas_mount_path
      gpuflow_nas_pvc_name           = module.kubernetes.pvc_name
      gpuflow_k8s_namespace          = module.kubernetes.namespace
      gpuflow_k8s_service_account    = module.kubernetes.service_account_name
      gpuflow_ecs_cluster            = module.ecs.cluster_arn
      gpuflow_ecs_task_role_arn      = module.ecs.task_role_arn
      gpuflow_ecs_execution_role_arn = module.ecs.task_execution_role_arn
      gpuflow_ecs_log_group          = module.ecs.log_group_name
      gpuflow_efs_file_system_id     = module.nas.file_system_id
      gpuflow_efs_access_point_id    = module.nas.access_point_id
      # The ecs pool's flow tasks: the jobs' private subnets and security group.
      gpuflow_ecs_vpc_id = var.vpc_id
      gpuflow_ecs_network_configuration = {
        awsvpcConfiguration = {
          subnets        = var.private_subnet_ids
          securityGroups = [module.ecs.tasks_security_group_id]
          assignPublicIp = "DISABLED"
        }
      }
    },
    # Only with EC2 GPU capacity: a Prefect variable cannot be null.
    var.enable_gpu_capacity ? { gpuflow_ecs_gpu_capacity_provider = module.ecs.gpu_capacity_provider_name } : {},
  )
}
