provider "alicloud" {
  region = var.region
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
  base_job_templates_dir = coalesce(var.base_job_templates_dir, "${path.module}/../../../../deployments/base_job_templates")
  kubernetes_template    = "${local.base_job_templates_dir}/kubernetes.json"
}

module "nas" {
  source = "../../modules/nas-alicloud"

  name                = var.name
  vswitch_ids         = var.vswitch_ids
  allowed_cidr_blocks = var.allowed_cidr_blocks

  tags = var.tags
}

module "kubernetes" {
  source = "../../modules/kubernetes"

  name                              = var.name
  namespace                         = var.name
  nas_backend                       = "alicloud"
  create_storage_class              = var.create_storage_class
  storage_class_name                = module.nas.storage_class_name
  alicloud_storage_class_parameters = module.nas.storage_class_parameters
  nas_mount_path                    = var.nas_mount_path
  gpu_quota                         = var.gpu_count

  enable_prefect_worker        = var.enable_prefect_worker
  prefect_worker_chart_version = var.prefect_worker_chart_version
  work_pool_name               = module.prefect.kubernetes_work_pool_name
  prefect_api_config           = var.prefect_account_id == null ? "server" : "cloud"
  prefect_api_url              = var.prefect_api_url
  prefect_account_id           = var.prefect_account_id
  prefect_workspace_id         = var.prefect_workspace_id
  prefect_api_key              = var.prefect_api_key

  labels = { "app.kubernetes.io/instance" = var.name }
}

module "prefect" {
  source = "../../modules/prefect"

  workspace_id = var.prefect_workspace_id

  create_ecs_work_pool         = false
  kubernetes_base_job_template = fileexists(local.kubernetes_template) ? file(local.kubernetes_template) : null

  gpu_count       = var.gpu_count
  gpu_type_counts = var.gpu_type_counts

  variables = {
    gpuflow_nas_mount_path      = var.nas_mount_path
    gpuflow_nas_pvc_name        = module.kubernetes.pvc_name
    gpuflow_k8s_namespace       = module.kubernetes.namespace
    gpuflow_k8s_service_account = module.kubernetes.service_account_name
  }
}
