locals {
  tags = merge(
    {
      "gpuflow:component" = "nas"
      "managed-by"        = "terraform"
    },
    var.tags,
  )

  access_group_name = "${var.name}-nas"
  vswitches         = { for index, id in var.vswitch_ids : tostring(index) => id }
  cidrs             = { for index, cidr in var.allowed_cidr_blocks : tostring(index) => cidr }
}

resource "alicloud_nas_file_system" "this" {
  file_system_type = "standard"
  protocol_type    = "NFS"
  storage_type     = var.storage_type
  zone_id          = var.zone_id
  description      = "${var.name} shared storage (models, environments, workspaces)"

  # 1 = NAS-managed key, 2 = the customer's KMS key.
  encrypt_type = var.kms_key_id == null ? 1 : 2
  kms_key_id   = var.kms_key_id

  tags = local.tags
}

resource "alicloud_nas_access_group" "this" {
  access_group_name = local.access_group_name
  access_group_type = "Vpc"
  description       = "NFS access for the ${var.name} cluster"
}

resource "alicloud_nas_access_rule" "this" {
  for_each = local.cidrs

  access_group_name = alicloud_nas_access_group.this.access_group_name
  source_cidr_ip    = each.value
  rw_access_type    = "RDWR"
  user_access_type  = var.user_access_type
  priority          = 1
}

resource "alicloud_nas_mount_target" "this" {
  for_each = local.vswitches

  file_system_id    = alicloud_nas_file_system.this.id
  access_group_name = alicloud_nas_access_group.this.access_group_name
  vswitch_id        = each.value
  security_group_id = var.security_group_id
}
