"""Against real ECS: runs only with AWS credentials and a configured cluster.

Set GPUFLOW_ECS_CLUSTER, GPUFLOW_ECS_SUBNETS (comma-separated), GPUFLOW_ECS_EXECUTION_ROLE_ARN
(a role with AmazonECSTaskExecutionRolePolicy) and optionally GPUFLOW_ECS_SECURITY_GROUPS,
AWS_REGION and GPUFLOW_ECS_GPU_CAPACITY_PROVIDER (an EC2 GPU capacity provider of the
cluster). The tasks pull busybox from ECR Public, so the subnets need a route out (a public
IP is assigned). Each test costs a few Fargate seconds; tasks are stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from prefect_aws import AwsCredentials

from gpuflow.compute.base import JobSpec
from gpuflow.compute.ecs.target import EcsTask

_NEEDED = ("GPUFLOW_ECS_CLUSTER", "GPUFLOW_ECS_SUBNETS", "GPUFLOW_ECS_EXECUTION_ROLE_ARN")
_missing = [name for name in _NEEDED if not os.environ.get(name)]
# Probe the credential chain only when the test is configured (it may ask IMDS).
_has_credentials = not _missing and boto3.Session().get_credentials() is not None

pytestmark = pytest.mark.skipif(
    bool(_missing) or not _has_credentials,
    reason="real AWS ECS test: needs AWS credentials and "
    + (", ".join(_missing) if _missing else "credentials")
    + " (see this module's docstring)",
)

_IMAGE = "public.ecr.aws/docker/library/busybox:stable"


def _target(**overrides: Any) -> EcsTask:
    fields: dict[str, Any] = {
        "aws_credentials": AwsCredentials(region_name=os.environ.get("AWS_REGION")),
        "cluster": os.environ["GPUFLOW_ECS_CLUSTER"],
        "family": "gpuflow-test-busybox",
        "image": _IMAGE,
        "cpu": "256",
        "memory": "512",
        "execution_role_arn": os.environ["GPUFLOW_ECS_EXECUTION_ROLE_ARN"],
        "log_group": "/gpuflow/tests",
        "subnets": os.environ["GPUFLOW_ECS_SUBNETS"].split(","),
        "security_groups": [
            g for g in os.environ.get("GPUFLOW_ECS_SECURITY_GROUPS", "").split(",") if g
        ],
        "assign_public_ip": True,
        "change_to_workdir": False,  # busybox's env has no -C
        "tags": {"purpose": "gpuflow-tests"},
    }
    fields.update(overrides)
    return EcsTask(**fields)


def _job(script: str, gpus: int = 0) -> JobSpec:
    return JobSpec(
        name=f"gpuflow-test-{uuid.uuid4().hex[:6]}",
        argv=["sh", "-c", script],
        workdir=Path("/"),
        gpus=gpus,
        timeout_s=600,
    )


def test_a_fargate_task_streams_its_lines_and_returns_its_exit_code() -> None:
    lines: list[str] = []

    async def collect(line: str) -> None:
        lines.append(line)

    result = asyncio.run(
        _target().run(_job("echo hello from ecs; echo second line; exit 3"), collect)
    )
    assert result.exit_code == 3
    assert lines[:2] == ["hello from ecs", "second line"]


def test_cancelling_stops_the_real_task_within_seconds() -> None:
    target = _target()
    ecs = boto3.client("ecs", region_name=os.environ.get("AWS_REGION"))

    async def scenario() -> tuple[str, float]:
        running = asyncio.create_task(target.run(_job("echo started; sleep 600"), _ignore))
        deadline = time.monotonic() + 300
        arn = None
        while arn is None and time.monotonic() < deadline:
            await asyncio.sleep(2)
            arns = ecs.list_tasks(
                cluster=target.cluster, desiredStatus="RUNNING", startedBy="gpuflow"
            )
            arn = next(iter(arns["taskArns"]), None)
        assert arn is not None, "the task did not start within 5 minutes"
        cancelled_at = time.monotonic()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        task = ecs.describe_tasks(cluster=target.cluster, tasks=[arn])["tasks"][0]
        assert task["desiredStatus"] == "STOPPED"
        return arn, time.monotonic() - cancelled_at

    _, seconds = asyncio.run(scenario())
    assert seconds < 10


@pytest.mark.skipif(
    not os.environ.get("GPUFLOW_ECS_GPU_CAPACITY_PROVIDER"),
    reason="needs GPUFLOW_ECS_GPU_CAPACITY_PROVIDER (an EC2 GPU capacity provider)",
)
def test_a_gpu_task_on_ec2_capacity_sees_its_gpu() -> None:
    target = _target(
        launch_type=None,
        capacity_provider_strategy=[
            {"capacityProvider": os.environ["GPUFLOW_ECS_GPU_CAPACITY_PROVIDER"], "weight": 1}
        ],
        image="public.ecr.aws/docker/library/ubuntu:24.04",
        memory="2048",
        cpu="1024",
    )
    lines: list[str] = []

    async def collect(line: str) -> None:
        lines.append(line)

    result = asyncio.run(target.run(_job("nvidia-smi -L", gpus=1), collect))
    assert result.exit_code == 0
    assert any(line.startswith("GPU 0:") for line in lines)
    assert len(result.devices) == 1


async def _ignore(line: str) -> None:
    return None
