"""The ECS compute target over HTTP against moto's server on 127.0.0.1.

How task states are driven: moto starts every task RUNNING and its state manager
(``/moto-api/state-manager/set-transition`` for ``ecs::task``) moves it on to STOPPED;
the tests hold a task RUNNING with a "manual" transition that needs 10**9 descriptions
per step and release it with an "immediate" one. What moto cannot produce — ``failures``
in a ``RunTask`` answer, a ``stopCode``/``stoppedReason``/container exit code other than
0 — comes from answers written by hand from the AWS documentation (``recorded/``; none
was captured from AWS), served by the proxy in ``tests/support/ecs_answers.py`` in front
of moto, which also refuses what ECS refuses and honours ``clientToken``. moto runs no containers:
the tests write the container's CloudWatch log events themselves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator
from gpuflow_progress import ExitCode, Progress, encode
from prefect_aws import AwsCredentials

from gpuflow.compute.base import JobResult, JobSpec
from gpuflow.compute.ecs.aws import API_CALLS
from gpuflow.compute.ecs.outcome import EcsCapacityError, EcsTaskError
from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.ecs.taskdef import (
    FINGERPRINT_TAG,
    FLOW_RUN_TAG,
    EcsConfigError,
    log_stream_name,
)
from gpuflow.core.errors import JobFailedError
from gpuflow.core.request import parse_request
from gpuflow.core.workspace import Workspace
from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.pipeline.job_contract import PROMPT_FILE, job_spec
from gpuflow.postprocess.job import run_postprocess
from gpuflow.postprocess.watermark import Watermark
from gpuflow.storage.model_cache import CachedModel
from tests.ecs.conftest import (
    REGION,
    all_tasks,
    container_log_writer,
    ecs_client,
    recorded,
)
from tests.support.ecs_answers import AnswersProxy

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(219)]

HOLD = {"progression": "manual", "times": 10**9}
RELEASE = {"progression": "immediate"}


def _job(gpus: int = 0, timeout_s: float = 60.0, **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "name": "i2v-run",
        "argv": ["/mnt/gpuflow-nas/envs/abc/.venv/bin/i2v", "--prompt", "a prompt; rm -rf / $(x)"],
        "env": {"GPUFLOW_RUN": "1"},
        "workdir": Path("/mnt/gpuflow-nas/workspaces/run-1"),
        "gpus": gpus,
        "timeout_s": timeout_s,
    }
    fields.update(overrides)
    return JobSpec(**fields)


async def _wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout_s: float = 10.0,
    alongside: asyncio.Task[Any] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alongside is not None and alongside.done():
            alongside.result()  # raise what ended the run early
            raise AssertionError(f"the run ended while waiting for {what}")
        value = await asyncio.to_thread(condition)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running_task_arn(aws: AwsCredentials, cluster: str) -> str | None:
    # ListTasks does not tick moto's state manager (DescribeTasks does).
    arns = ecs_client(aws).list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"]
    return arns[0] if arns else None


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)


# -- task definitions -------------------------------------------------------------------


def test_task_definition_registration_is_idempotent(
    make_target: Callable[..., EcsTask], aws: AwsCredentials
) -> None:
    target = make_target()
    first = target.ensure_task_definition(gpus=0)
    assert target.ensure_task_definition(gpus=0) == first, "same settings must reuse the revision"

    changed = target.model_copy(update={"memory": "4096"})
    second = changed.ensure_task_definition(gpus=0)
    assert second != first
    assert second.endswith(":2")
    assert changed.ensure_task_definition(gpus=0) == second

    described = ecs_client(aws).describe_task_definition(taskDefinition=second, include=["TAGS"])
    definition = described["taskDefinition"]
    container = definition["containerDefinitions"][0]
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert definition["memory"] == "4096"
    assert definition["taskRoleArn"].endswith(":role/gpuflow-job")
    assert definition["executionRoleArn"].endswith(":role/gpuflow-execution")
    assert definition["volumes"][0]["efsVolumeConfiguration"]["fileSystemId"].startswith("fs-")
    assert container["mountPoints"] == [
        {"sourceVolume": "gpuflow-nas", "containerPath": "/mnt/gpuflow-nas", "readOnly": False}
    ]
    assert container["logConfiguration"]["options"]["awslogs-group"] == target.log_group
    assert container["secrets"][0]["valueFrom"].startswith("arn:aws:secretsmanager:")
    tags = {tag["key"]: tag["value"] for tag in described["tags"]}
    assert tags["team"] == "video"
    assert tags[FINGERPRINT_TAG] == changed.task_definition_request(0, REGION).fingerprint()


def test_gpu_jobs_get_their_own_ec2_family_with_gpu_requirements(
    make_target: Callable[..., EcsTask], aws: AwsCredentials
) -> None:
    target = make_target(launch_type="EC2")
    arn = target.ensure_task_definition(gpus=2)
    assert f":task-definition/{target.family}-2gpu:1" in arn
    definition = ecs_client(aws).describe_task_definition(taskDefinition=arn)["taskDefinition"]
    assert definition["requiresCompatibilities"] == ["EC2"]
    assert definition["containerDefinitions"][0]["resourceRequirements"] == [
        {"type": "GPU", "value": "2"}
    ]


@pytest.mark.parametrize(
    ("settings", "gpus", "shm_mib"),
    [
        ({"memory": "30720"}, 2, 15360),  # GPU task: half its memory by default
        ({"memory": "30720", "shared_memory_mib": 4096}, 1, 4096),
        ({"memory": "30720"}, 0, None),  # CPU task: Docker's default
    ],
)
def test_ec2_gpu_tasks_get_a_dev_shm_sized_for_dataloaders_and_nccl(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    settings: dict[str, Any],
    gpus: int,
    shm_mib: int | None,
) -> None:
    target = make_target(launch_type="EC2", **settings)
    arn = target.ensure_task_definition(gpus=gpus)
    definition = ecs_client(aws).describe_task_definition(taskDefinition=arn)["taskDefinition"]
    (container,) = definition["containerDefinitions"]
    assert container.get("linuxParameters", {}).get("sharedMemorySize") == shm_mib


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"shared_memory_mib": 1024}, "Fargate does not support"),  # the default launch type
        ({"launch_type": "EC2", "memory": "2048", "shared_memory_mib": 4096}, "exceeds"),
    ],
)
def test_a_dev_shm_ecs_cannot_give_is_refused_naming_it(
    make_target: Callable[..., EcsTask], settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named) as caught:
        make_target(**settings)
    assert f"shared_memory_mib={settings['shared_memory_mib']}" in str(caught.value)


def test_requests_match_the_real_ecs_api_schema(make_target: Callable[..., EcsTask]) -> None:
    """Validate what gpuflow sends against botocore's ECS service model (no network)."""
    model = botocore.session.get_session().get_service_model("ecs")
    validator = ParamValidator()
    target = make_target(launch_type="EC2")
    for operation, params in (
        (
            "RegisterTaskDefinition",
            target.task_definition_request(4, REGION).to_api_with_fingerprint({"a": "b"}),
        ),
        ("RunTask", target.run_task_request(_job(gpus=4), "arn:td", "flow-1", "token").to_api()),
    ):
        report = validator.validate(params, model.operation_model(operation).input_shape)
        assert not report.has_errors(), report.generate_report()


def test_secret_values_are_refused_without_being_echoed(
    make_target: Callable[..., EcsTask],
) -> None:
    with pytest.raises(ValueError, match="HF_TOKEN") as caught:
        make_target(secrets={"HF_TOKEN": "hf_supersecretvalue123"})
    assert "hf_supersecretvalue123" not in str(caught.value)
    assert "hf_supersecretvalue123" not in repr(caught.value)


# -- refusing what cannot run -----------------------------------------------------------


@pytest.mark.parametrize(
    "capacity",
    [
        {"launch_type": "FARGATE"},
        {
            "launch_type": None,
            "capacity_provider_strategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
        },
    ],
)
def test_gpu_on_fargate_is_refused_before_any_call(
    make_target: Callable[..., EcsTask], answers: AnswersProxy, capacity: dict[str, Any]
) -> None:
    target = make_target(**capacity)
    calls_before = len(answers.code_calls)
    with pytest.raises(EcsConfigError, match=r"needs 1 GPU.*Fargate has no GPUs") as caught:
        asyncio.run(target.run(_job(gpus=1), _Lines()))
    assert not caught.value.retryable
    assert len(answers.code_calls) == calls_before, "no AWS call may happen before the refusal"


def test_mixed_fargate_and_ec2_providers_are_refused(make_target: Callable[..., EcsTask]) -> None:
    with pytest.raises(ValueError, match="mix Fargate and EC2"):
        make_target(
            launch_type=None,
            capacity_provider_strategy=[
                {"capacityProvider": "FARGATE"},
                {"capacityProvider": "gpu-g6e"},
            ],
        )


# -- running ----------------------------------------------------------------------------


def test_run_streams_paginated_logs_and_returns_the_exit_code(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    target = make_target(log_page_size=3)
    task_transitions(HOLD)
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    received = _Lines()
    first = [f"loading weights {i}" for i in range(7)]  # 7 events: three pages of three
    progress = encode(Progress(5, 10, "denoising"))

    async def scenario() -> JobResult:
        running = asyncio.create_task(target.run(_job(), received))
        task_arn = await _wait_for(
            lambda: _running_task_arn(aws, cluster), "the task to start", alongside=running
        )
        write = container_log_writer(
            aws, target.log_group, log_stream_name("gpuflow", "job", task_arn)
        )
        await asyncio.to_thread(write, first)
        await _wait_for(lambda: len(received.lines) >= 7, "the first lines", alongside=running)
        await asyncio.to_thread(write, [progress, "multi\nline"])
        await _wait_for(lambda: len(received.lines) >= 10, "the progress line", alongside=running)
        task_transitions(RELEASE)
        return await asyncio.wait_for(running, timeout=20)

    result = asyncio.run(scenario())
    assert received.lines == [*first, progress, "multi", "line"]
    assert result.exit_code == 0
    assert result.devices == (), "a job that asked for no GPU gets none"

    [task] = all_tasks(aws, cluster)
    override = task["overrides"]["containerOverrides"][0]
    assert override["command"] == [
        "env",
        "-C",
        "/mnt/gpuflow-nas/workspaces/run-1",
        "--",
        *_job().argv,
    ]
    assert {"name": "GPUFLOW_RUN", "value": "1"} in override["environment"]
    assert {"key": "gpuflow:job", "value": "i2v-run"} in task["tags"]
    assert not any(tag["key"] == FLOW_RUN_TAG for tag in task["tags"]), "no flow run here"
    assert answers.run_task_requests[-1]["startedBy"] == "gpuflow"


def test_a_lost_run_task_answer_is_retried_without_starting_a_twin(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    """ECS started the task but its answer never arrived: botocore sends RunTask again,
    and the submission's clientToken makes ECS answer with the first task."""
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    answers.lose_run_task_answers = 1
    sent_before = len(answers.run_task_requests)

    result = asyncio.run(make_target().run(_job(), _Lines()))

    assert result.exit_code == 0
    first, again = answers.run_task_requests[sent_before:]
    assert again["clientToken"] == first["clientToken"]
    assert len(all_tasks(aws, cluster)) == 1


@pytest.mark.parametrize(
    ("answer", "exit_code", "retryable"),
    [
        ("stopped_exit_2_input_error", 2, False),
        ("stopped_exit_4_resource_error", 4, True),
        ("stopped_out_of_memory", int(ExitCode.RESOURCE_ERROR), True),
    ],
)
def test_container_exit_codes_map_to_the_design_classes(
    make_target: Callable[..., EcsTask],
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
    answer: str,
    exit_code: int,
    retryable: bool,
    tmp_path: Path,
) -> None:
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded(answer))
    result = asyncio.run(make_target().run(_job(), _Lines()))
    assert result.exit_code == exit_code
    assert "ECS task" in result.last_lines[-1]

    # A job run by gpuflow's own code on this target fails by the exit code's class.
    answers.on_stop(cluster, recorded(answer))
    raw, destination = tmp_path / "raw.mp4", tmp_path / "video.mp4"
    with pytest.raises(JobFailedError) as failed:
        asyncio.run(
            run_postprocess(make_target(), [Watermark()], raw, destination, tmp_path, _Lines())
        )
    assert failed.value.exit_code == exit_code
    assert failed.value.retryable is retryable


@pytest.mark.parametrize(
    ("answer", "retryable", "message"),
    [
        ("stopped_spot_interruption", True, "interrupted"),
        ("stopped_host_terminated", True, "Host EC2"),
        ("stopped_pull_rate_limited", True, "could not pull the image"),
        ("stopped_image_not_found", False, "check the image name"),
        ("stopped_secret_unreadable", False, "could not read a secret"),
        ("stopped_efs_mount_failed", False, "could not mount the NAS"),
        ("stopped_infrastructure_health", True, "interrupted"),
    ],
)
def test_tasks_that_never_ran_to_an_end_raise_by_class(
    make_target: Callable[..., EcsTask],
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
    answer: str,
    retryable: bool,
    message: str,
) -> None:
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded(answer))
    with pytest.raises(EcsTaskError, match=message) as caught:
        asyncio.run(make_target().run(_job(), _Lines()))
    assert caught.value.retryable is retryable


@pytest.mark.parametrize(
    ("answer", "error", "retryable"),
    [
        ("run_task_failure_gpu", EcsCapacityError, True),
        ("run_task_failure_fargate_capacity", EcsCapacityError, True),
        ("run_task_failure_attribute", EcsTaskError, False),
    ],
)
def test_run_task_failures_become_errors_by_class(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    answer: str,
    error: type[EcsTaskError],
    retryable: bool,
) -> None:
    answers.queue_run_task_answer(recorded(answer))
    with pytest.raises(error) as caught:
        asyncio.run(make_target().run(_job(), _Lines()))
    assert caught.value.retryable is retryable
    assert recorded(answer)["failures"][0]["reason"] in str(caught.value)
    assert all_tasks(aws, cluster) == []


def test_unknown_cluster_is_a_config_error_naming_it(make_target: Callable[..., EcsTask]) -> None:
    target = make_target(cluster="no-such-cluster")
    with pytest.raises(EcsTaskError, match="no-such-cluster") as caught:
        asyncio.run(target.run(_job(), _Lines()))
    assert not caught.value.retryable


def test_throttled_polls_do_not_cost_a_running_job(
    make_target: Callable[..., EcsTask],
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    """DescribeTasks throttled (botocore retries each poll 3 times): the watch carries on."""
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    answers.throttle_describe_tasks = 6  # two whole polls fail
    try:
        result = asyncio.run(make_target().run(_job(), _Lines()))
    finally:
        answers.throttle_describe_tasks = 0
    assert result.exit_code == 0


def test_throttled_log_reads_lose_no_line(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    """GetLogEvents throttled for one whole read (3 attempts): every line still arrives once."""
    target = make_target(log_page_size=2)
    task_transitions(HOLD)
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    received = _Lines()
    lines = [f"line {i}" for i in range(5)]

    async def scenario() -> JobResult:
        running = asyncio.create_task(target.run(_job(), received))
        task_arn = await _wait_for(
            lambda: _running_task_arn(aws, cluster), "the task to start", alongside=running
        )
        write = container_log_writer(
            aws, target.log_group, log_stream_name("gpuflow", "job", task_arn)
        )
        await asyncio.to_thread(write, lines[:2])
        await _wait_for(lambda: len(received.lines) >= 2, "the first lines", alongside=running)
        answers.throttle_get_log_events = 3
        await asyncio.to_thread(write, lines[2:])
        await _wait_for(
            lambda: answers.throttle_get_log_events == 0, "the throttling", alongside=running
        )
        await _wait_for(lambda: len(received.lines) >= 5, "the rest", alongside=running)
        task_transitions(RELEASE)
        return await asyncio.wait_for(running, timeout=20)

    try:
        result = asyncio.run(scenario())
    finally:
        answers.throttle_get_log_events = 0
    assert result.exit_code == 0
    assert received.lines == lines


def test_cancelling_the_run_stops_the_task_before_it_returns(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    target = make_target(poll_interval_s=0.5, poll_max_interval_s=5.0)
    task_transitions(HOLD)

    async def scenario() -> None:
        running = asyncio.create_task(target.run(_job(), _Lines()))
        await _wait_for(
            lambda: _running_task_arn(aws, cluster), "the task to start", alongside=running
        )
        await _wait_for(
            lambda: answers.calls.count("DescribeTasks") >= 3,
            "polls to back off",
            alongside=running,
        )
        calls_before = len(answers.calls)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # Not waiting out the backed-off poll: StopTask went before the run gave up, so
        # the task is stopping the moment the cancelled run returns.
        assert "StopTask" in answers.calls[calls_before:]

    asyncio.run(scenario())
    [task] = all_tasks(aws, cluster)
    assert task["desiredStatus"] == "STOPPED"
    assert task["stoppedReason"] == "gpuflow: the flow stopped waiting"


def test_a_job_and_a_sweep_make_exactly_the_declared_aws_calls(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    """Run, follow, sweep (the reconciler's listing) and stop: every operation the code
    makes is in API_CALLS, which Terraform's task role grants, and each listed one is
    made, so the list is neither short nor padded."""
    target = make_target()
    task_transitions(HOLD)
    before = len(answers.code_calls)

    async def scenario() -> None:
        running = asyncio.create_task(target.run(_job(), _Lines()))
        await _wait_for(
            lambda: _running_task_arn(aws, cluster), "the task to start", alongside=running
        )
        await _wait_for(
            lambda: "logs:GetLogEvents" in answers.code_calls[before:],
            "the log to be read",
            alongside=running,
        )
        assert len(await asyncio.to_thread(target.running_gpuflow_tasks)) == 1
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(scenario())
    assert set(answers.code_calls[before:]) == set(API_CALLS)


def test_cancelling_while_run_task_is_in_flight_stops_what_it_started(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    target = make_target()
    target.ensure_task_definition(gpus=0)  # so the run reaches RunTask at once
    task_transitions(HOLD)
    answers.run_task_delay_s = 1.5

    sent_before = len(answers.run_task_requests)

    async def scenario() -> None:
        running = asyncio.create_task(target.run(_job(), _Lines()))
        await _wait_for(
            lambda: len(answers.run_task_requests) > sent_before,
            "RunTask to be sent",
            alongside=running,
        )
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    try:
        asyncio.run(scenario())
    finally:
        answers.run_task_delay_s = 0.0
    ecs = ecs_client(aws)
    assert ecs.list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"] == []
    assert len(ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"]) == 1


def test_a_job_past_its_timeout_is_stopped_as_a_resource_error(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    task_transitions(HOLD)
    result = asyncio.run(make_target().run(_job(timeout_s=0.5), _Lines()))
    assert result.exit_code == int(ExitCode.RESOURCE_ERROR)
    assert "exceeded its timeout" in result.last_lines[-1]
    [task] = all_tasks(aws, cluster)
    assert task["desiredStatus"] == "STOPPED"
    assert "timeout" in task["stoppedReason"]


@pytest.mark.parametrize(
    ("settings", "expression"),
    [
        ({}, "attribute:gpuflow.gpu-type == a10g"),
        (
            {
                "gpu_type_attribute": "ecs.instance-type",
                "gpu_type_values": {"a10g": ["g5.xlarge", "g5.2xlarge"]},
            },
            "attribute:ecs.instance-type in [g5.xlarge, g5.2xlarge]",
        ),
    ],
)
def test_a_gpu_type_places_the_task_on_instances_that_have_it(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
    settings: dict[str, Any],
    expression: str,
) -> None:
    ec2 = aws.get_boto3_session().client(
        "ec2", region_name=REGION, endpoint_url=aws.aws_client_parameters.endpoint_url
    )
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]
    ecs_client(aws).register_container_instance(
        cluster=cluster,
        instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]}),
    )
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    target = make_target(launch_type="EC2", **settings)

    result = asyncio.run(target.run(_job(gpus=1, gpu_type="a10g"), _Lines()))

    assert result.exit_code == 0
    sent = answers.run_task_requests[-1]
    assert sent["placementConstraints"] == [{"type": "memberOf", "expression": expression}]


def test_a_gpu_type_fargate_cannot_place_or_an_unsafe_value_is_refused_before_any_call(
    make_target: Callable[..., EcsTask], answers: AnswersProxy
) -> None:
    calls_before = len(answers.code_calls)
    with pytest.raises(EcsConfigError, match=r"GPU type 'a10g'.*Fargate"):
        asyncio.run(make_target().run(_job(gpu_type="a10g"), _Lines()))
    unsafe = make_target(launch_type="EC2", gpu_type_values={"a10g": ["g5] or [x"]})
    with pytest.raises(EcsConfigError, match=r"'g5\] or \[x' is not a plain name"):
        asyncio.run(unsafe.run(_job(gpus=1, gpu_type="a10g"), _Lines()))
    assert answers.code_calls[calls_before:] == []


def test_an_existing_task_definition_gets_gpus_as_an_override(
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    existing = make_target(launch_type="EC2").ensure_task_definition(gpus=0)
    ecs = ecs_client(aws)
    ec2 = aws.get_boto3_session().client(
        "ec2", region_name=REGION, endpoint_url=aws.aws_client_parameters.endpoint_url
    )
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]
    ecs.register_container_instance(
        cluster=cluster,
        instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]}),
    )
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    target = make_target(launch_type="EC2", task_definition_arn=existing, image=None)
    calls_before = len(answers.calls)
    result = asyncio.run(target.run(_job(gpus=1), _Lines()))
    assert result.exit_code == 0
    assert "RegisterTaskDefinition" not in answers.calls[calls_before:]
    [task] = all_tasks(aws, cluster)
    assert task["taskDefinitionArn"] == existing
    assert task["overrides"]["containerOverrides"][0]["resourceRequirements"] == [
        {"type": "GPU", "value": "1"}
    ]
    assert result.devices == ("GPU-5c1e3b2a-9f7d-4e6b-8a1c-0d2e3f4a5b6c",)


def test_overrides_over_the_ecs_limit_are_refused_before_any_call_naming_only_their_size(
    make_target: Callable[..., EcsTask], answers: AnswersProxy
) -> None:
    target = make_target()
    secret_text = "私の秘密の話" * 800  # 4,800 CJK characters: 28,800 escaped
    calls_before = len(answers.code_calls)
    with pytest.raises(EcsConfigError, match=r"are \d+ characters.*at most 8192") as caught:
        asyncio.run(target.run(_job(argv=["i2v-job", f"--note={secret_text}"]), _Lines()))
    assert not caught.value.retryable
    assert "私の秘密" not in str(caught.value)
    assert len(answers.code_calls) == calls_before, "no AWS call may happen before the refusal"


def test_the_longest_cjk_prompt_starts_a_task_its_job_reads_from_the_workspace(
    make_target: Callable[..., EcsTask],
    answers: AnswersProxy,
    cluster: str,
    task_transitions: Callable[[dict[str, Any]], None],
    tmp_path: Path,
) -> None:
    # 4,000 CJK characters (the request's most): 24,000 once JSON-escaped, three times what
    # RunTask takes in argv; the job gets the path of a file in the workspace instead.
    prompt = "晨雾中的山丘、镜头缓缓向左平移。" * 250
    request = parse_request({"prompt": prompt, "image_uri": "file:///srv/cat.png"})
    workspace = Workspace.create(tmp_path, "ecs-" + "2" * 32)
    job = job_spec(
        request,
        Path(__file__).resolve().parents[2] / "jobs" / "i2v",
        ResolvedEnv(key="k", root=tmp_path / "env", built=False),
        CachedModel(path=tmp_path / "model", downloaded=False, bytes_downloaded=0),
        workspace.input_path("cat.png"),
        workspace,
        60.0,
    )
    task_transitions(RELEASE)
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    # On Fargate (no GPUs; moto places an EC2 task only on a registered instance).
    result = asyncio.run(make_target().run(job.model_copy(update={"gpus": 0}), _Lines()))
    assert result.exit_code == 0
    sent = answers.run_task_requests[-1]
    command = sent["overrides"]["containerOverrides"][0]["command"]
    assert f"--prompt-file={workspace.root / PROMPT_FILE}" in command
    assert (workspace.root / PROMPT_FILE).read_text(encoding="utf-8") == prompt
