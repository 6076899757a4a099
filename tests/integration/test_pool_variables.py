"""What bootstrap says about the Prefect variables the work pools read: a problem only for
the pools the stack's flows run in."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client

from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.ops.pool_variables import PoolVariablesReport, ensure_pool_variables
from gpuflow.pipeline.stack import GpuflowStack

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]
_ECS_VARIABLES = ("gpuflow_ecs_task_role_arn", "gpuflow_efs_file_system_id")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _ensure(stack: GpuflowStack) -> PoolVariablesReport:
    async with get_client() as client:
        for name in _ECS_VARIABLES:  # a fresh server: none of them set
            existing = await client.read_variable_by_name(name)
            if existing is not None:
                await client.delete_variable_by_name(name)
        return await ensure_pool_variables(client, stack, ["process", "kubernetes", "ecs"])


async def test_a_local_stack_lacks_nothing_the_ecs_pool_needs(
    prefect_server: LocalServer, layout: EmbeddedLayout
) -> None:
    report = await _ensure(layout.stack())

    assert report.missing == {}
    assert set(_ECS_VARIABLES) <= set(report.unset_elsewhere["ecs"])


async def test_an_ecs_stack_without_a_task_role_is_told_what_its_pool_lacks(
    prefect_server: LocalServer,
) -> None:
    data = yaml.safe_load((REPO / "blocks" / "ecs.yaml").read_text())
    for target in ("compute", "postprocess_compute"):
        data[target]["task_role_arn"] = None
    stack = GpuflowStack.model_validate(data)
    stack = stack.model_copy(update={"gpu_limit": f"gpu-{uuid.uuid4().hex[:6]}"})

    report = await _ensure(stack)

    assert report.missing == {"ecs": ["gpuflow_ecs_task_role_arn"]}
    assert "ecs" not in report.unset_elsewhere
    # The flow tasks' network: the stack's subnets and security groups, no public IP.
    compute = data["compute"]
    assert report.set_from_stack["gpuflow_ecs_network_configuration"] == {
        "awsvpcConfiguration": {
            "subnets": compute["subnets"],
            "securityGroups": compute["security_groups"],
            "assignPublicIp": "DISABLED",
        }
    }
    assert report.set_from_stack["gpuflow_ecs_vpc_id"] == compute["vpc_id"]
