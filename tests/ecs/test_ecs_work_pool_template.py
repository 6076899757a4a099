"""The ``ecs`` work pool's base job template: committed JSON, and what it renders to."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import botocore.session
import pytest
from botocore.validate import ParamValidator
from prefect_aws.workers.ecs_worker import ECSJobConfiguration

from gpuflow.compute.ecs.pool import ecs_base_job_template
from gpuflow.ops.local_server import LocalServer

ROLE = "arn:aws:iam::123456789012:role/"


def test_new_variables_are_required_where_the_flow_cannot_work_without_them() -> None:
    variables = ecs_base_job_template()["variables"]
    assert {"efs_file_system_id", "execution_role_arn", "task_role_arn"} <= set(
        variables["required"]
    )
    assert variables["properties"]["nas_mount_path"]["default"] == "/mnt/nas"


@pytest.mark.integration
@pytest.mark.parametrize("access_point", [None, "fsap-0fedcba9876543210"])
def test_prefect_aws_renders_the_nas_volume_mount_and_roles(
    prefect_server: LocalServer, access_point: str | None
) -> None:
    values: dict[str, Any] = {
        "efs_file_system_id": "fs-0123456789abcdef0",
        "execution_role_arn": f"{ROLE}gpuflow-execution",
        "task_role_arn": f"{ROLE}gpuflow-flow",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpuflow:1",
        "cluster": "gpuflow",
        "nas_mount_path": "/nas",
    }
    if access_point:
        values["efs_access_point_id"] = access_point
    configuration = cast(
        ECSJobConfiguration,
        asyncio.run(ECSJobConfiguration.from_template_and_values(ecs_base_job_template(), values)),
    )
    definition = configuration.task_definition
    [volume] = definition["volumes"]
    efs = volume["efsVolumeConfiguration"]
    assert efs["fileSystemId"] == "fs-0123456789abcdef0"
    assert efs["transitEncryption"] == "ENABLED"
    assert efs["authorizationConfig"].get("accessPointId") == access_point
    assert definition["containerDefinitions"][0]["mountPoints"] == [
        {"containerPath": "/nas", "readOnly": False, "sourceVolume": volume["name"]}
    ]
    assert definition["taskRoleArn"] == f"{ROLE}gpuflow-flow"
    assert definition["executionRoleArn"] == f"{ROLE}gpuflow-execution"
    # What the worker will register is valid for ECS's real RegisterTaskDefinition schema.
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    # The worker names the family after the flow when the template leaves it unset.
    registered = {"family": "prefect_generate-video", **json.loads(json.dumps(definition))}
    report = ParamValidator().validate(registered, shape)
    assert not report.has_errors(), report.generate_report()
