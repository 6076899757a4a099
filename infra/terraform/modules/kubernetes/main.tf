locals {
  labels = merge(
    {
      "app.kubernetes.io/part-of"    = "gpuflow"
      "app.kubernetes.io/managed-by" = "terraform"
    },
    var.labels,
  )

  namespace = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace

  storage_class_name = coalesce(
    var.storage_class_name,
    var.nas_backend == "efs" ? "${var.name}-efs" : "alicloud-nas-subpath",
  )

  storage_provisioner = {
    efs      = "efs.csi.aws.com"
    alicloud = "nasplugin.csi.alibabacloud.com"
  }
}

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name   = var.namespace
    labels = local.labels
  }
}

################################################################################
# Shared storage: one ReadWriteMany claim on the NAS
################################################################################

resource "kubernetes_storage_class_v1" "this" {
  count = var.create_storage_class ? 1 : 0

  metadata {
    name   = local.storage_class_name
    labels = local.labels
  }

  storage_provisioner    = local.storage_provisioner[var.nas_backend]
  reclaim_policy         = "Retain"
  volume_binding_mode    = "Immediate"
  allow_volume_expansion = var.nas_backend == "alicloud"
  parameters             = var.nas_backend == "alicloud" ? var.alicloud_storage_class_parameters : {}
  mount_options          = var.nas_backend == "alicloud" ? ["nolock,tcp,noresvport", "vers=3"] : []

  lifecycle {
    precondition {
      condition     = var.nas_backend != "alicloud" || contains(keys(var.alicloud_storage_class_parameters), "server")
      error_message = "alicloud_storage_class_parameters needs at least 'server' (the nas-alicloud module's storage_class_parameters output)."
    }
  }
}

# EFS: a static volume through gpuflow's access point, so every pod sees the same root and uid.
resource "kubernetes_persistent_volume_v1" "efs" {
  count = var.nas_backend == "efs" ? 1 : 0

  metadata {
    name   = "${var.name}-nas"
    labels = local.labels
  }

  spec {
    capacity = {
      storage = var.storage_size
    }
    access_modes                     = ["ReadWriteMany"]
    persistent_volume_reclaim_policy = "Retain"
    storage_class_name               = local.storage_class_name

    persistent_volume_source {
      csi {
        driver        = local.storage_provisioner.efs
        volume_handle = var.efs_volume_handle
        volume_attributes = {
          encryptInTransit = "true"
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.efs_volume_handle != null
      error_message = "efs_volume_handle is required when nas_backend is efs."
    }
  }

  depends_on = [kubernetes_storage_class_v1.this]
}

resource "kubernetes_persistent_volume_claim_v1" "nas" {
  metadata {
    name      = var.pvc_name
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    access_modes       = ["ReadWriteMany"]
    storage_class_name = local.storage_class_name
    volume_name        = var.nas_backend == "efs" ? kubernetes_persistent_volume_v1.efs[0].metadata[0].name : null

    resources {
      requests = {
        storage = var.storage_size
      }
    }
  }

  depends_on = [kubernetes_storage_class_v1.this]
}

# One place that says where the NAS is: flow pods and job replicas read it with envFrom.
resource "kubernetes_config_map_v1" "nas" {
  metadata {
    name      = "${var.name}-nas"
    namespace = local.namespace
    labels    = local.labels
  }

  data = {
    GPUFLOW_NAS_ROOT = var.nas_mount_path
    GPUFLOW_NAS_PVC  = kubernetes_persistent_volume_claim_v1.nas.metadata[0].name
  }
}

################################################################################
# GPU quota: the second fence behind the Prefect "gpu" limit
################################################################################

resource "kubernetes_resource_quota_v1" "gpu" {
  count = var.gpu_quota == null ? 0 : 1

  metadata {
    name      = "${var.name}-gpu"
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    hard = {
      "requests.nvidia.com/gpu" = tostring(var.gpu_quota)
    }
  }
}

################################################################################
# Identity of the flow pods
################################################################################

resource "kubernetes_service_account_v1" "flow" {
  metadata {
    name        = var.service_account_name
    namespace   = local.namespace
    labels      = local.labels
    annotations = var.service_account_annotations
  }

  # The flow pod talks to the Kubernetes API (PyTorchJobs, pods, logs): it needs its token.
  automount_service_account_token = true
}

resource "kubernetes_role_v1" "flow" {
  metadata {
    name      = "${var.name}-flow"
    namespace = local.namespace
    labels    = local.labels
  }

  # The same rules as the code's Role (gpuflow/compute/kubernetes/pool.py, rendered to
  # deployments/kubernetes/rbac.yaml); tests/infra/test_terraform.py checks they agree.
  rule {
    api_groups = ["kubeflow.org"]
    resources  = ["pytorchjobs"]
    verbs      = ["create", "get", "list", "watch", "patch", "delete"]
  }

  rule {
    api_groups = [""]
    resources  = ["pods"]
    verbs      = ["get", "list", "watch"]
  }

  rule {
    api_groups = [""]
    resources  = ["pods/log"]
    verbs      = ["get"]
  }

  rule {
    api_groups = [""]
    resources  = ["events"]
    verbs      = ["get", "list", "watch"]
  }

  # The per-job Secret carrying secret env values: only created, owned by its job from
  # birth (the garbage collector deletes it). See docs/kubernetes.md for what create allows.
  rule {
    api_groups = [""]
    resources  = ["secrets"]
    verbs      = ["create"]
  }

  # Owner references with blockOwnerDeletion need update on the owner's finalizers where
  # the OwnerReferencesPermissionEnforcement admission plugin is on.
  rule {
    api_groups = ["batch"]
    resources  = ["jobs/finalizers"]
    verbs      = ["update"]
  }

  rule {
    api_groups = ["kubeflow.org"]
    resources  = ["pytorchjobs/finalizers"]
    verbs      = ["update"]
  }
}

# Reading the PyTorchJob CRD (only that one), to validate manifests before sending them.
resource "kubernetes_cluster_role_v1" "flow_crd_reader" {
  metadata {
    name   = "${var.name}-flow-${local.namespace}-crd-reader"
    labels = local.labels
  }

  rule {
    api_groups     = ["apiextensions.k8s.io"]
    resources      = ["customresourcedefinitions"]
    resource_names = ["pytorchjobs.kubeflow.org"]
    verbs          = ["get"]
  }
}

resource "kubernetes_cluster_role_binding_v1" "flow_crd_reader" {
  metadata {
    name   = kubernetes_cluster_role_v1.flow_crd_reader.metadata[0].name
    labels = local.labels
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = kubernetes_cluster_role_v1.flow_crd_reader.metadata[0].name
  }

  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.flow.metadata[0].name
    namespace = local.namespace
  }
}

resource "kubernetes_role_binding_v1" "flow" {
  metadata {
    name      = "${var.name}-flow"
    namespace = local.namespace
    labels    = local.labels
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.flow.metadata[0].name
  }

  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.flow.metadata[0].name
    namespace = local.namespace
  }
}

################################################################################
# Prefect worker (official chart), optional
################################################################################

locals {
  prefect_api_key_secret = "${var.name}-prefect-api-key"
  create_api_key_secret  = var.enable_prefect_worker && var.prefect_api_config == "cloud"

  # One values document per concern, deep-merged by Helm. Only the chosen API config is
  # written: a null in Helm values would delete the chart's default instead.
  worker_values = concat(
    [yamlencode({
      worker = {
        apiConfig    = var.prefect_api_config
        replicaCount = var.prefect_worker_replicas
        image = {
          prefectTag = var.prefect_worker_image_tag
        }
        config = {
          workPool = var.work_pool_name
        }
        podLabels = local.labels
      }
    })],
    var.prefect_api_config == "cloud" ? [yamlencode({
      worker = {
        cloudApiConfig = {
          accountId   = var.prefect_account_id
          workspaceId = var.prefect_workspace_id
          apiKeySecret = {
            name = local.prefect_api_key_secret
            key  = "key"
          }
        }
      }
    })] : [],
    var.prefect_api_config == "server" ? [yamlencode({
      worker = {
        serverApiConfig = {
          apiUrl = var.prefect_api_url
        }
      }
    })] : [],
    [yamlencode(var.prefect_worker_values)],
  )
}

resource "kubernetes_secret_v1" "prefect_api_key" {
  count = local.create_api_key_secret ? 1 : 0

  metadata {
    name      = local.prefect_api_key_secret
    namespace = local.namespace
    labels    = local.labels
  }

  type = "Opaque"

  data = {
    key = var.prefect_api_key
  }

  lifecycle {
    precondition {
      condition     = var.prefect_api_key != null
      error_message = "prefect_api_key is required when the worker talks to Prefect Cloud."
    }
  }
}

resource "helm_release" "prefect_worker" {
  count = var.enable_prefect_worker ? 1 : 0

  name       = "${var.name}-prefect-worker"
  namespace  = local.namespace
  repository = var.prefect_worker_chart_repository
  chart      = "prefect-worker"
  version    = var.prefect_worker_chart_version

  atomic          = true
  cleanup_on_fail = true
  wait            = true

  values = local.worker_values

  lifecycle {
    precondition {
      condition     = var.prefect_worker_chart_version != null
      error_message = "prefect_worker_chart_version must pin a chart version when enable_prefect_worker is true."
    }
    precondition {
      condition     = var.prefect_api_config != "server" || var.prefect_api_url != null
      error_message = "prefect_api_url is required when prefect_api_config is server."
    }
    precondition {
      condition     = var.prefect_api_config != "cloud" || (var.prefect_account_id != null && var.prefect_workspace_id != null)
      error_message = "prefect_account_id and prefect_workspace_id are required when prefect_api_config is cloud."
    }
  }

  depends_on = [kubernetes_secret_v1.prefect_api_key]
}
