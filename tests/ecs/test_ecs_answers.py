"""The ECS proxy in front of moto refuses what ECS refuses and keeps each task's answers
its own (behaviours hand-written from the AWS docs; see tests/support/ecs_answers.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from prefect_aws import AwsCredentials

from gpuflow.compute.base import JobSpec
from gpuflow.compute.ecs.outcome import EcsTaskError
from gpuflow.compute.ecs.target import EcsTask
from tests.ecs.conftest import Network, all_tasks, ecs_client, recorded
from tests.support.ecs_answers import AnswersProxy

pytestmark = pytest.mark.integration

RELEASE = {"progression": "immediate"}
_PROBE = JobSpec(name="probe", argv=["true"], workdir=Path("/mnt/gpuflow-nas/workspaces/p"), gpus=0)


def _definition(**fields: Any) -> dict[str, Any]:
    # moto sums container memory to place a task: give the container its share.
    container = {"name": "job", "image": "busybox", "essential": True, "memory": 256}
    container.update(fields.pop("container", {}))
    return {
        "family": f"probe-{uuid.uuid4().hex[:8]}",
        "containerDefinitions": [container],
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "256",
        "memory": "512",
        **fields,
    }


def _client_error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = caught.value.response["Error"]
    return error["Code"], error["Message"]


@pytest.mark.parametrize(
    ("cpu", "memory"), [("256", "30720"), ("256", "4096"), ("4096", "4096"), ("300", "1024")]
)
def test_fargate_refuses_a_cpu_and_memory_it_has_no_size_for(
    aws: AwsCredentials, cpu: str, memory: str
) -> None:
    with pytest.raises(ClientError) as caught:
        ecs_client(aws).register_task_definition(**_definition(cpu=cpu, memory=memory))
    code, message = _client_error(caught)
    assert code == "ClientException"
    assert f"{cpu} CPU, {memory} memory" in message


@pytest.mark.parametrize(("cpu", "memory"), [("256", "512"), ("4096", "30720"), ("8192", "20480")])
def test_fargate_registers_a_size_it_has(aws: AwsCredentials, cpu: str, memory: str) -> None:
    answer = ecs_client(aws).register_task_definition(**_definition(cpu=cpu, memory=memory))
    assert answer["taskDefinition"]["cpu"] == cpu


def test_a_fargate_task_definition_asking_for_gpus_is_refused(aws: AwsCredentials) -> None:
    gpu = {"resourceRequirements": [{"type": "GPU", "value": "1"}]}
    with pytest.raises(ClientError) as caught:
        ecs_client(aws).register_task_definition(**_definition(container=gpu))
    code, message = _client_error(caught)
    assert code == "ClientException" and "GPU" in message


def _run(aws: AwsCredentials, cluster: str, network: Network, **fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "cluster": cluster,
        "count": 1,
        "networkConfiguration": {
            "awsvpcConfiguration": {
                "subnets": [network.subnet],
                "securityGroups": [network.security_group],
            }
        },
        **fields,
    }
    answer: dict[str, Any] = ecs_client(aws).run_task(**request)
    return answer


def test_a_gpu_override_cannot_run_on_fargate(
    aws: AwsCredentials, cluster: str, network: Network
) -> None:
    arn = ecs_client(aws).register_task_definition(**_definition())["taskDefinition"][
        "taskDefinitionArn"
    ]
    gpu = {"name": "job", "resourceRequirements": [{"type": "GPU", "value": "1"}]}
    with pytest.raises(ClientError) as caught:
        _run(
            aws,
            cluster,
            network,
            taskDefinition=arn,
            launchType="FARGATE",
            overrides={"containerOverrides": [gpu]},
        )
    assert _client_error(caught)[0] == "ClientException"
    assert all_tasks(aws, cluster) == []


def test_an_ec2_only_task_definition_cannot_run_on_fargate(
    aws: AwsCredentials, cluster: str, network: Network
) -> None:
    ec2_only = _definition(requiresCompatibilities=["EC2"])
    arn = ecs_client(aws).register_task_definition(**ec2_only)["taskDefinition"][
        "taskDefinitionArn"
    ]
    with pytest.raises(ClientError, match="does not support launch_type FARGATE"):
        _run(aws, cluster, network, taskDefinition=arn, launchType="FARGATE")


def test_a_repeated_client_token_returns_the_first_task(
    aws: AwsCredentials, cluster: str, network: Network
) -> None:
    arn = ecs_client(aws).register_task_definition(**_definition())["taskDefinition"][
        "taskDefinitionArn"
    ]
    token = uuid.uuid4().hex
    first = _run(aws, cluster, network, taskDefinition=arn, launchType="FARGATE", clientToken=token)
    again = _run(aws, cluster, network, taskDefinition=arn, launchType="FARGATE", clientToken=token)
    assert again["tasks"][0]["taskArn"] == first["tasks"][0]["taskArn"]
    assert len(all_tasks(aws, cluster)) == 1
    other = _run(aws, cluster, network, taskDefinition=arn, launchType="FARGATE")
    assert other["tasks"][0]["taskArn"] != first["tasks"][0]["taskArn"]


def test_stop_details_belong_to_the_next_task_alone(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    network: Network,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded("stopped_exit_2_input_error"))
    result = asyncio.run(make_target().run(_PROBE, _ignore))
    assert result.exit_code == 2

    arn = ecs_client(aws).register_task_definition(**_definition())["taskDefinition"][
        "taskDefinitionArn"
    ]
    untouched = _run(aws, cluster, network, taskDefinition=arn, launchType="FARGATE")
    described = ecs_client(aws).describe_tasks(
        cluster=cluster, tasks=[untouched["tasks"][0]["taskArn"]]
    )["tasks"][0]
    assert described["lastStatus"] == "STOPPED"
    assert "stopCode" not in described, "another task's stop details are not this one's"
    assert all(c.get("exitCode", 0) == 0 for c in described["containers"])


async def _ignore(line: str) -> None:
    return None


def test_a_fargate_target_whose_size_fargate_lacks_fails_naming_it(
    make_target: Callable[..., EcsTask],
) -> None:
    target = make_target(launch_type="FARGATE", cpu="256", memory="30720")
    with pytest.raises(EcsTaskError, match=r"256 CPU, 30720 memory") as caught:
        asyncio.run(target.run(_PROBE, _ignore))
    assert not caught.value.retryable


def _command_of_overrides_length(length: int) -> dict[str, Any]:
    # {"containerOverrides":[{"name":"job","command":["x...x"]}]} in compact JSON.
    frame = json.dumps(
        {"containerOverrides": [{"name": "job", "command": [""]}]}, separators=(",", ":")
    )
    return {"containerOverrides": [{"name": "job", "command": ["x" * (length - len(frame))]}]}


def test_overrides_over_8192_characters_are_refused_as_ecs_refuses_them(
    aws: AwsCredentials, cluster: str, network: Network
) -> None:
    arn = ecs_client(aws).register_task_definition(**_definition())["taskDefinition"][
        "taskDefinitionArn"
    ]
    at_limit = _command_of_overrides_length(8192)
    assert len(json.dumps(at_limit, separators=(",", ":"))) == 8192
    _run(aws, cluster, network, taskDefinition=arn, launchType="FARGATE", overrides=at_limit)
    with pytest.raises(ClientError) as caught:
        _run(
            aws,
            cluster,
            network,
            taskDefinition=arn,
            launchType="FARGATE",
            overrides=_command_of_overrides_length(8193),
        )
    assert _client_error(caught) == (
        "InvalidParameterException",
        "Container Overrides length must be at most 8192",
    )
    assert len(all_tasks(aws, cluster)) == 1
