################################################################################
# Cluster add-ons the GPU jobs need, each optional, each chart pinned
#
# The Kubeflow training operator (v1.9.4 or later) is not offered here: its v1 releases
# ship kustomize manifests, no Helm chart (docs/kubernetes.md shows the kubectl command).
################################################################################

resource "helm_release" "efs_csi_driver" {
  count = var.install_efs_csi_driver ? 1 : 0

  name       = "aws-efs-csi-driver"
  namespace  = "kube-system"
  repository = "https://kubernetes-sigs.github.io/aws-efs-csi-driver"
  chart      = "aws-efs-csi-driver"
  version    = var.efs_csi_driver_chart_version

  atomic          = true
  cleanup_on_fail = true
  wait            = true
}

resource "helm_release" "nvidia_device_plugin" {
  count = var.install_nvidia_device_plugin ? 1 : 0

  name             = "nvidia-device-plugin"
  namespace        = "nvidia-device-plugin"
  create_namespace = true
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_chart_version

  atomic          = true
  cleanup_on_fail = true
  wait            = true
}
