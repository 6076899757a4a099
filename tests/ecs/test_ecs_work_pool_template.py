"""The ``ecs`` work pool's base job template: committed JSON, and what it renders to."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any, cast

import botocore.session
import pytest
from botocore.validate import ParamValidator
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSWorker

from gpuflow.compute.ecs.pool import (
    PREFECT_VARIABLE_DEFAULTS,
    PREFECT_VARIABLES,
    ecs_base_job_template,
)
from gpuflow.ops.local_server import LocalServer
from tests.support.prefect_variables import ABSENT, prefect_variables

ROLE = "arn:aws:iam::123456789012:role/"


def test_new_variables_are_required_where_the_flow_cannot_work_without_them() -> None:
    variables = ecs_base_job_template()["variables"]
    assert {"efs_file_system_id", "execution_role_arn", "task_role_arn"} <= set(
        variables["required"]
    )
    # Each stack-specific value defaults to a Prefect variable, so deployments name none.
    for variable, prefect_variable in PREFECT_VARIABLES.items():
        default = variables["properties"][variable]["default"]
        assert default == "{{ prefect.variables." + prefect_variable + " }}"
    assert PREFECT_VARIABLE_DEFAULTS == {
        "gpuflow_nas_mount_path": "/mnt/nas",
        "gpuflow_ecs_network_configuration": {},  # prefect-aws's own default: the default VPC
    }


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("fs-0123456789abcdef0", True),
        ("{{ prefect.variables.gpuflow_efs_file_system_id }}", True),
        ("fs-XYZ", False),
        ("{{ efs }}", False),
        ("", False),
    ],
)
def test_the_file_system_id_is_an_id_or_a_prefect_variable(value: str, accepted: bool) -> None:
    pattern = ecs_base_job_template()["variables"]["properties"]["efs_file_system_id"]["pattern"]
    assert (re.fullmatch(pattern, value) is not None) is accepted


@pytest.mark.integration
@pytest.mark.anyio
async def test_the_server_takes_the_template_and_a_run_reads_the_stack_from_variables(
    prefect_server: LocalServer,
) -> None:
    stack = {
        "gpuflow_ecs_cluster": "arn:aws:ecs:us-east-1:123456789012:cluster/video",
        "gpuflow_ecs_execution_role_arn": f"{ROLE}video-execution",
        "gpuflow_ecs_task_role_arn": f"{ROLE}video-task",
        "gpuflow_efs_file_system_id": "fs-0123456789abcdef0",
        "gpuflow_efs_access_point_id": "fsap-0fedcba9876543210",
        "gpuflow_nas_mount_path": "/shared",
        "gpuflow_ecs_vpc_id": "vpc-0123456789abcdef0",
        "gpuflow_ecs_network_configuration": {
            "awsvpcConfiguration": {
                "subnets": ["subnet-0123456789abcdef0"],
                "securityGroups": ["sg-0123456789abcdef0"],
                "assignPublicIp": "DISABLED",
            }
        },
    }
    assert set(stack) == set(PREFECT_VARIABLES.values())
    template = ecs_base_job_template()
    name = f"gpuflow-ecs-{uuid.uuid4().hex[:8]}"
    async with get_client() as client:
        # The server checks the defaults against the variables' schema here (422 if not).
        await client.create_work_pool(
            WorkPoolCreate(name=name, type="ecs", base_job_template=template)
        )
        try:
            stored = await client.read_work_pool(name)
            async with prefect_variables(client, stack):
                configuration = cast(
                    ECSJobConfiguration,
                    await ECSJobConfiguration.from_template_and_values(
                        stored.base_job_template, {"image": "gpuflow:1"}, client=client
                    ),
                )
        finally:
            await client.delete_work_pool(name)
    definition = configuration.task_definition
    [volume] = definition["volumes"]
    assert volume["efsVolumeConfiguration"]["fileSystemId"] == "fs-0123456789abcdef0"
    access = volume["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"]
    assert access == "fsap-0fedcba9876543210"
    assert definition["containerDefinitions"][0]["mountPoints"][0]["containerPath"] == "/shared"
    assert definition["taskRoleArn"] == f"{ROLE}video-task"
    assert configuration.execution_role_arn == f"{ROLE}video-execution"
    assert configuration.cluster == stack["gpuflow_ecs_cluster"]
    assert configuration.network_configuration == stack["gpuflow_ecs_network_configuration"]
    assert configuration.vpc_id == stack["gpuflow_ecs_vpc_id"]


@pytest.mark.integration
def test_prefect_aws_renders_the_nas_volume_mount_and_roles(prefect_server: LocalServer) -> None:
    access_point = "fsap-0fedcba9876543210"
    values: dict[str, Any] = {
        "efs_file_system_id": "fs-0123456789abcdef0",
        "execution_role_arn": f"{ROLE}gpuflow-execution",
        "task_role_arn": f"{ROLE}gpuflow-flow",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpuflow:1",
        "cluster": "gpuflow",
        "nas_mount_path": "/nas",
        "efs_access_point_id": access_point,
        "network_configuration": {},  # what bootstrap gives gpuflow_ecs_network_configuration
    }
    configuration = cast(
        ECSJobConfiguration,
        asyncio.run(ECSJobConfiguration.from_template_and_values(ecs_base_job_template(), values)),
    )
    definition = configuration.task_definition
    [volume] = definition["volumes"]
    efs = volume["efsVolumeConfiguration"]
    assert efs["fileSystemId"] == "fs-0123456789abcdef0"
    assert efs["transitEncryption"] == "ENABLED"
    assert efs["authorizationConfig"]["accessPointId"] == access_point
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


@pytest.mark.integration
@pytest.mark.anyio
async def test_a_stack_without_an_access_point_registers_none_not_an_empty_one(
    prefect_server: LocalServer,
) -> None:
    """No gpuflow_efs_access_point_id: the variable resolves to "" and the rendered
    configuration holds ``accessPointId: ""``, which RegisterTaskDefinition would refuse;
    the worker's own preparation (prefect-aws drops empty keys before registering) sends
    none, and what it sends is valid for ECS's schema."""
    stack = {
        "gpuflow_ecs_cluster": "gpuflow",
        "gpuflow_ecs_execution_role_arn": f"{ROLE}e",
        "gpuflow_ecs_task_role_arn": f"{ROLE}t",
        "gpuflow_efs_file_system_id": "fs-0123456789abcdef0",
        "gpuflow_nas_mount_path": "/mnt/nas",
        "gpuflow_ecs_network_configuration": {},  # bootstrap's default
        "gpuflow_efs_access_point_id": ABSENT,
    }
    async with get_client() as client, prefect_variables(client, stack):
        configuration = cast(
            ECSJobConfiguration,
            await ECSJobConfiguration.from_template_and_values(
                ecs_base_job_template(), {"image": "gpuflow:1"}, client=client
            ),
        )
    [rendered] = configuration.task_definition["volumes"]
    assert rendered["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"] == ""
    worker = ECSWorker(work_pool_name="unused")
    flow_run = FlowRun(flow_id=uuid.uuid4(), name="a-run")
    registered = worker._prepare_task_definition(configuration, "us-east-1", flow_run)
    [volume] = registered["volumes"]
    assert volume["efsVolumeConfiguration"]["authorizationConfig"] == {"iam": "ENABLED"}
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate({"family": "f", **registered}, shape)
    assert not report.has_errors(), report.generate_report()
