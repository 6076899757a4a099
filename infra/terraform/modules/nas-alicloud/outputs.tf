output "file_system_id" {
  description = "ID of the NAS file system."
  value       = alicloud_nas_file_system.this.id
}

output "access_group_name" {
  description = "Name of the access group that admits the cluster's CIDR blocks."
  value       = alicloud_nas_access_group.this.access_group_name
}

output "mount_target_domains" {
  description = "Domain names of the mount targets, keyed by the index of their vSwitch in vswitch_ids."
  value       = { for key, target in alicloud_nas_mount_target.this : key => target.mount_target_domain }
}

output "server" {
  description = "server parameter of the alicloud-nas-subpath StorageClass: first mount target and gpuflow's root path."
  value       = "${alicloud_nas_mount_target.this["0"].mount_target_domain}:${var.root_path}"
}

output "storage_class_name" {
  description = "Name of the StorageClass that ACK clusters use for this file system."
  value       = var.storage_class_name
}

output "storage_class_parameters" {
  description = "Parameters for the alicloud-nas-subpath StorageClass (nasplugin.csi.alibabacloud.com), ready for the kubernetes module."
  value = {
    volumeAs        = "subpath"
    server          = "${alicloud_nas_mount_target.this["0"].mount_target_domain}:${var.root_path}"
    archiveOnDelete = "false"
  }
}
