"""The ``ecs`` work pool's base job template: prefect-aws's default plus the NAS and roles.

Flow runs in an ``ecs`` work pool run as ECS tasks (usually Fargate). gpuflow's flows
need the NAS mounted at the same path as every job (venvs are not relocatable) and a
task role (to reach S3, EFS and ECS for the job steps), so this template adds to the
ECS worker's own default: an EFS volume, its mount point and the task role in the task
definition, with their variables. The stack-specific values default to Prefect variables
(``PREFECT_VARIABLES``). ``gpuflow bootstrap`` installs it from this code; the
copy in the repository's ``deployments/`` is rendered by ``gpuflow.ops.pool_templates``.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect_aws.workers.ecs_worker import ECSWorker

from gpuflow.compute.ecs.taskdef import (
    NAS_VOLUME_NAME,
    EfsAuthorization,
    EfsVolumeConfiguration,
    MountPoint,
    Volume,
)
from gpuflow.compute.pool_variables import (
    VARIABLE_REFERENCE_PATTERN,
    default_to_variables,
    id_or_reference,
)

DEFAULT_NAS_MOUNT_PATH = "/mnt/nas"  # the same path as the Kubernetes template and Terraform

# Template variable -> the Prefect variable its default reads. A deployment then names no
# cluster, role or file system: `gpuflow bootstrap` sets these from an ECS stack, and
# Terraform's prefect module from its outputs.
PREFECT_VARIABLES: dict[str, str] = {
    "cluster": "gpuflow_ecs_cluster",
    "execution_role_arn": "gpuflow_ecs_execution_role_arn",
    "task_role_arn": "gpuflow_ecs_task_role_arn",
    "efs_file_system_id": "gpuflow_efs_file_system_id",
    "efs_access_point_id": "gpuflow_efs_access_point_id",
    "nas_mount_path": "gpuflow_nas_mount_path",
    "network_configuration": "gpuflow_ecs_network_configuration",
    # prefect-aws takes a network configuration only with the VPC it belongs to.
    "vpc_id": "gpuflow_ecs_vpc_id",
}
# Given by `gpuflow bootstrap` when neither the stack nor Terraform set it. An empty
# network configuration is prefect-aws's own default (the default VPC's subnets): the
# template variable must resolve to an object, never to the "" of a missing variable.
PREFECT_VARIABLE_DEFAULTS: dict[str, Any] = {
    "gpuflow_nas_mount_path": DEFAULT_NAS_MOUNT_PATH,
    "gpuflow_ecs_network_configuration": {},
}


_VARIABLES: dict[str, dict[str, Any]] = {
    "efs_file_system_id": {
        "title": "EFS file system ID",
        "description": "The NAS: models, uv environments and workspaces (fs-...).",
        "type": "string",
        "pattern": id_or_reference("fs-[0-9a-f]+"),
    },
    "efs_access_point_id": {
        "title": "EFS access point ID",
        "description": "Access point to mount through (fsap-...): the jobs' own, so that the "
        "flow sees the NAS at the same root as they do.",
        "type": "string",
        "pattern": id_or_reference("fsap-[0-9a-f]+"),
    },
    "nas_mount_path": {
        "title": "NAS mount path",
        "description": "Where the NAS is mounted: the same path in every pod, task and job.",
        "type": "string",
    },
}
_REQUIRED = ("efs_file_system_id", "execution_role_arn", "task_role_arn")


def _placeholder(variable: str) -> str:
    return "{{ " + variable + " }}"


def ecs_base_job_template() -> dict[str, Any]:
    """prefect-aws's default ECS template with the EFS NAS volume, its mount and the roles."""
    template = copy.deepcopy(ECSWorker.get_default_base_job_template())
    variables = template["variables"]
    variables["properties"].update(copy.deepcopy(_VARIABLES))
    # An object, or (the default) a reference to the Prefect variable holding one: the
    # server checks defaults against the schema before resolving any variable.
    network = variables["properties"]["network_configuration"]
    object_schema = {key: network.pop(key) for key in ("type", "additionalProperties")}
    network["anyOf"] = [
        object_schema,
        {"type": "string", "pattern": f"^{VARIABLE_REFERENCE_PATTERN}$"},
    ]
    variables["required"] = sorted({*variables.get("required", []), *_REQUIRED})
    default_to_variables(variables["properties"], PREFECT_VARIABLES)

    task_definition = template["job_configuration"]["task_definition"]
    volume = Volume(
        name=NAS_VOLUME_NAME,
        efs_volume_configuration=EfsVolumeConfiguration(
            file_system_id=_placeholder("efs_file_system_id"),
            authorization_config=EfsAuthorization(
                access_point_id=_placeholder("efs_access_point_id"), iam="ENABLED"
            ),
        ),
    )
    task_definition["volumes"] = [volume.to_api()]
    task_definition["taskRoleArn"] = _placeholder("task_role_arn")
    [container] = task_definition["containerDefinitions"]
    container["mountPoints"] = [
        MountPoint(
            source_volume=NAS_VOLUME_NAME, container_path=_placeholder("nas_mount_path")
        ).to_api()
    ]
    return template
