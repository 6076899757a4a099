output "file_system_id" {
  description = "ID of the EFS file system."
  value       = aws_efs_file_system.this.id
}

output "file_system_arn" {
  description = "ARN of the EFS file system (for IAM policies of the tasks that mount it)."
  value       = aws_efs_file_system.this.arn
}

output "dns_name" {
  description = "DNS name of the file system, for NFS clients outside the CSI driver."
  value       = aws_efs_file_system.this.dns_name
}

output "access_point_id" {
  description = "ID of gpuflow's access point."
  value       = aws_efs_access_point.this.id
}

output "access_point_arn" {
  description = "ARN of gpuflow's access point."
  value       = aws_efs_access_point.this.arn
}

output "volume_handle" {
  description = "volumeHandle for a static EFS CSI PersistentVolume that mounts through gpuflow's access point (fs-id::fsap-id)."
  value       = "${aws_efs_file_system.this.id}::${aws_efs_access_point.this.id}"
}

output "security_group_id" {
  description = "ID of the security group attached to the mount targets."
  value       = aws_security_group.this.id
}

output "mount_target_ids" {
  description = "IDs of the mount targets, keyed by the index of their subnet in subnet_ids."
  value       = { for key, target in aws_efs_mount_target.this : key => target.id }
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the file system."
  value       = local.kms_key_arn
}

output "root_directory" {
  description = "Directory of the file system exposed as the access point's root."
  value       = var.root_directory
}
