"""The ECS compute target: a job step as an ECS task.

CPU work (postprocess, bursts with nothing to keep warm) runs on Fargate; GPU jobs run
on EC2 (or managed-instance) capacity, since Fargate has no GPUs. The block holds the
cluster, the task definition's settings (or an existing task definition ARN), the
capacity (launch type or capacity-provider strategy), the network and the tags.

Lifecycle of one job: register the task definition if its settings changed
(idempotent, see ``gpuflow.compute.ecs.taskdef``), ``RunTask`` with container overrides and a
client token, then poll ``DescribeTasks`` with backoff while following the container's
CloudWatch log stream line by line. Cancelling the awaiting coroutine stops the task at
once (``StopTask``); a timeout stops it too. boto3 is synchronous, so each call runs in
a worker thread and every wait is a short async sleep that a cancellation interrupts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
from botocore.config import Config
from botocore.exceptions import ClientError
from gpuflow_progress import ExitCode
from prefect.logging import get_logger
from prefect_aws import AwsCredentials
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from gpuflow.compute.base import ComputeTarget, JobResult, JobSpec, LineHandler
from gpuflow.compute.ecs.aws import as_gpuflow_error, call
from gpuflow.compute.ecs.logs import LogFollower
from gpuflow.compute.ecs.outcome import EcsTaskError, classify_stopped_task, raise_for_run_failures
from gpuflow.compute.ecs.taskdef import (
    FARGATE_PROVIDERS,
    FINGERPRINT_TAG,
    FLOW_RUN_TAG,
    JOB_TAG,
    OVERRIDES_MAX_CHARS,
    STARTED_BY,
    AwsVpcConfiguration,
    CapacityProviderItem,
    ContainerDefinition,
    ContainerOverride,
    EcsConfigError,
    EfsNas,
    LaunchType,
    LinuxParameters,
    NetworkConfiguration,
    PlacementConstraint,
    RunTaskRequest,
    Tag,
    TaskDefinitionRequest,
    TaskOverride,
    awslogs,
    environment_pairs,
    gpu_requirements,
    log_stream_name,
    secret_refs,
)
from gpuflow.compute.interpreter_check import checked_command

_TAIL_LINES = 20
_CANCELLED_REASON = "gpuflow: the flow stopped waiting"
_POLL_FAILURES_TOLERATED = 5
_logger = get_logger("gpuflow.ecs")


class EcsTask(ComputeTarget):
    """Runs jobs as ECS tasks: Fargate for CPU work, EC2 GPU capacity for GPU jobs."""

    _block_type_name = "gpuflow ECS task"
    _block_type_slug = "gpuflow-ecs-task"
    _description = "Run job steps as ECS tasks: CPU work on Fargate, GPU jobs on EC2 GPU capacity."
    # A secret pasted where an ARN belongs must not reappear in a validation message.
    model_config = ConfigDict(hide_input_in_errors=True)

    aws_credentials: AwsCredentials = Field(
        default_factory=AwsCredentials, description="Credentials and client settings (prefect-aws)."
    )
    cluster: str = Field(min_length=1, description="ECS cluster name or ARN.")
    task_definition_arn: str | None = Field(
        default=None,
        description="Use this existing task definition instead of registering one from the "
        "settings below (the command, environment and GPUs are still set per job).",
    )
    family: str = Field(
        default="gpuflow-job",
        pattern=r"^[A-Za-z0-9_-]{1,240}$",
        description="Task definition family (a GPU count adds a '-<k>gpu' suffix).",
    )
    container_name: str = Field(default="job", pattern=r"^[A-Za-z0-9_-]{1,255}$")
    image: str | None = Field(
        default=None,
        description="Container image of the job: the job image (docker/job.Dockerfile) "
        "pushed to ECR, e.g. <repository URL>:job-<version>.",
    )
    cpu: str = Field(default="1024", description="Task CPU units (1024 = 1 vCPU).")
    memory: str = Field(default="2048", pattern=r"^[1-9][0-9]*$", description="Task memory in MiB.")
    shared_memory_mib: int | None = Field(
        default=None,
        ge=1,
        description="Size of /dev/shm in MiB (linuxParameters.sharedMemorySize, EC2 only); "
        "unset: half the task memory for GPU tasks (DataLoader workers and NCCL need more "
        "than Docker's 64 MiB), Docker's default otherwise. Charged to the task's memory.",
    )
    nas: EfsNas | None = Field(default=None, description="The NAS as an EFS volume.")
    execution_role_arn: str | None = Field(
        default=None, description="Role ECS uses to pull the image, read secrets, write logs."
    )
    task_role_arn: str | None = Field(default=None, description="Role the job itself runs as.")
    log_group: str = Field(
        default="/gpuflow/jobs",
        description="CloudWatch log group (Terraform's ecs module creates /gpuflow/jobs).",
    )
    log_stream_prefix: str = Field(default="gpuflow", pattern=r"^[^:*/][^:*]*$")
    create_log_group: bool = Field(
        default=False,
        description="Create the log group if it is missing (needs logs:CreateLogGroup, which "
        "Terraform's task role does not grant: the module creates the group).",
    )
    launch_type: LaunchType | None = Field(
        default=LaunchType.FARGATE,
        description="FARGATE or EC2; leave empty to use capacity_provider_strategy.",
    )
    capacity_provider_strategy: list[CapacityProviderItem] = Field(
        default_factory=list,
        description="E.g. FARGATE_SPOT, or the cluster's EC2 GPU capacity provider.",
    )
    gpu_type_attribute: str = Field(
        default="gpuflow.gpu-type",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$",
        description="Container-instance attribute naming the instance's GPU type (set it "
        "with ECS_INSTANCE_ATTRIBUTES in the agent's config, or use ecs.instance-type "
        "with gpu_type_values): a job with a gpu_type is placed where it matches.",
    )
    gpu_type_values: dict[str, list[str]] = Field(
        default_factory=dict,
        description="GPU type (a10g) -> attribute values that have it (g5.xlarge, ...); "
        "a type not listed matches the attribute's value equal to its own name.",
    )
    subnets: list[str] = Field(min_length=1, description="Subnets of the task (awsvpc).")
    security_groups: list[str] = Field(default_factory=list)
    assign_public_ip: bool = False
    vpc_id: str | None = Field(
        default=None,
        pattern=r"^vpc-[0-9a-f]+$",
        description="VPC of the subnets: the ecs work pool's flow tasks use these subnets and "
        "security groups, and prefect-aws takes them only with their VPC.",
    )
    environment: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Environment variable -> Secrets Manager or SSM parameter ARN (never values).",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags of tasks and definitions.")
    change_to_workdir: bool = Field(
        default=True,
        description="Start the job in its workdir via 'env -C' (GNU coreutils in the image).",
    )
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    poll_max_interval_s: float = Field(default=10.0, gt=0, le=300)
    log_page_size: int = Field(
        default=10000, ge=1, le=10000, description="Log events per GetLogEvents page."
    )
    log_drain_s: float = Field(
        default=10.0, ge=0, le=120, description="How long to wait for the last log lines."
    )

    _clients: dict[str, Any] = PrivateAttr(default_factory=dict)
    _clients_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _consistent(self) -> EcsTask:
        if self.launch_type is not None and self.capacity_provider_strategy:
            raise ValueError("set either launch_type or capacity_provider_strategy, not both")
        if self.launch_type is None and not self.capacity_provider_strategy:
            raise ValueError("set launch_type or capacity_provider_strategy")
        providers = {item.capacity_provider for item in self.capacity_provider_strategy}
        if providers & FARGATE_PROVIDERS and providers - FARGATE_PROVIDERS:
            raise ValueError(
                f"capacity providers {sorted(providers)} mix Fargate and EC2 capacity, "
                "which ECS does not allow in one strategy"
            )
        if self.task_definition_arn is None and self.image is None:
            raise ValueError("set image (to register a task definition) or task_definition_arn")
        if self.shared_memory_mib is not None and self.on_fargate:
            raise ValueError(
                f"shared_memory_mib={self.shared_memory_mib}: Fargate does not support "
                "linuxParameters.sharedMemorySize; use EC2 capacity or leave it unset"
            )
        if self.shared_memory_mib is not None and self.shared_memory_mib > int(self.memory):
            raise ValueError(
                f"shared_memory_mib={self.shared_memory_mib} exceeds the task memory "
                f"({self.memory} MiB) it is charged to"
            )
        secret_refs(self.secrets)
        return self

    @property
    def on_fargate(self) -> bool:
        if self.launch_type is not None:
            return self.launch_type is LaunchType.FARGATE
        return all(
            item.capacity_provider in FARGATE_PROVIDERS for item in self.capacity_provider_strategy
        )

    def require_nas_at(self, nas_root: Path, step: str) -> None:
        """Venvs on the NAS are not relocatable: a job must see the NAS where the flow does."""
        if self.nas is not None and PurePosixPath(self.nas.mount_path) != PurePosixPath(nas_root):
            raise EcsConfigError(
                f"the {step} ECS target mounts the NAS at {self.nas.mount_path} but the stack's "
                f"nas_root is {nas_root}: mount it at the same path everywhere"
            )

    def flow_pool_variables(self) -> dict[str, Any]:
        # Flow tasks run in the jobs' cluster, as the jobs' roles, on the jobs' NAS root,
        # in the jobs' subnets and security groups.
        values: dict[str, Any] = {
            "gpuflow_ecs_cluster": self.cluster,
            "gpuflow_ecs_execution_role_arn": self.execution_role_arn,
            "gpuflow_ecs_task_role_arn": self.task_role_arn,
            "gpuflow_ecs_network_configuration": self._network_configuration().to_api(),
            "gpuflow_ecs_vpc_id": self.vpc_id,
        }
        if self.nas is not None:
            values["gpuflow_efs_file_system_id"] = self.nas.file_system_id
            values["gpuflow_efs_access_point_id"] = self.nas.access_point_id
            values["gpuflow_nas_mount_path"] = self.nas.mount_path
        return {name: value for name, value in values.items() if value}

    def refuse_impossible(self, job: JobSpec) -> None:
        """Refuse, before any AWS call, a job this target can never run."""
        if (length := self._overrides(job).json_length()) > OVERRIDES_MAX_CHARS:
            # Named by size only: the command and environment may hold a user's text.
            raise EcsConfigError(
                f"job {job.name!r}: its RunTask container overrides (command and environment) "
                f"are {length} characters, and ECS allows at most {OVERRIDES_MAX_CHARS}: pass "
                "large values through a file in the run's workspace instead"
            )
        if job.gpu_type is not None and self.on_fargate:
            raise EcsConfigError(
                f"job {job.name!r} asks for GPU type {job.gpu_type!r} but ECS target on "
                f"cluster {self.cluster!r} runs on Fargate, which has no GPUs and takes no "
                "placement constraints"
            )
        self._gpu_type_placement(job)
        if job.gpus > 0 and self.on_fargate:
            capacity = self.launch_type or ", ".join(
                item.capacity_provider for item in self.capacity_provider_strategy
            )
            raise EcsConfigError(
                f"job {job.name!r} needs {job.gpus} GPU(s) but ECS target on cluster "
                f"{self.cluster!r} runs on {capacity}, and Fargate has no GPUs: use EC2 GPU "
                "capacity (launch_type EC2 or an EC2 capacity provider)"
            )

    # -- clients ------------------------------------------------------------------------

    def _client(self, service: str) -> Any:
        # Building a client loads the service model (slow): one per service and block.
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self._new_client(service)
            return self._clients[service]

    def _new_client(self, service: str) -> Any:
        session = self.aws_credentials.get_boto3_session()
        params = self.aws_credentials.aws_client_parameters.get_params_override()
        # Short socket timeouts keep every blocking call (and so a cancellation) brief.
        ours = Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard"})
        params["config"] = params["config"].merge(ours) if "config" in params else ours
        if self.aws_credentials.region_name:
            params["region_name"] = self.aws_credentials.region_name
        return session.client(service, **params)

    # -- task definition ----------------------------------------------------------------

    def task_definition_request(self, gpus: int, region: str) -> TaskDefinitionRequest:
        """The task definition these settings describe, for a job with ``gpus`` GPUs."""
        if self.image is None:
            raise EcsConfigError("an image is needed to register a task definition")
        container = ContainerDefinition(
            name=self.container_name,
            image=self.image,
            # The one essential container may use all of the task's memory (a hard limit
            # equal to the task's, which ECS accepts on Fargate and EC2 alike).
            memory=int(self.memory),
            environment=environment_pairs(self.environment),
            secrets=secret_refs(self.secrets) or None,
            mount_points=[self.nas.mount_point()] if self.nas else None,
            log_configuration=awslogs(self.log_group, region, self.log_stream_prefix),
            resource_requirements=gpu_requirements(gpus),
            linux_parameters=self._linux_parameters(gpus),
        )
        return TaskDefinitionRequest(
            family=f"{self.family}-{gpus}gpu" if gpus else self.family,
            container_definitions=[container],
            requires_compatibilities=["FARGATE"] if self.on_fargate else ["EC2"],
            cpu=self.cpu,
            memory=self.memory,
            execution_role_arn=self.execution_role_arn,
            task_role_arn=self.task_role_arn,
            volumes=[self.nas.volume()] if self.nas else None,
        )

    def _linux_parameters(self, gpus: int) -> LinuxParameters | None:
        if self.on_fargate:
            return None
        size = self.shared_memory_mib or (int(self.memory) // 2 if gpus else None)
        return LinuxParameters(shared_memory_size=size) if size else None

    def ensure_task_definition(self, gpus: int) -> str:
        """The ARN of a task definition for ``gpus`` GPUs, registered only if it changed."""
        if self.task_definition_arn is not None:
            return self.task_definition_arn
        ecs = self._client("ecs")
        logs = self._client("logs")
        request = self.task_definition_request(gpus, ecs.meta.region_name)
        if self.create_log_group:
            try:
                logs.create_log_group(logGroupName=self.log_group)
            except ClientError as error:
                # A group that already exists is the one wanted: every task definition shares it.
                if error.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                    raise as_gpuflow_error(error, f"log group {self.log_group!r}") from error
        fingerprint = request.fingerprint()
        try:
            current = ecs.describe_task_definition(taskDefinition=request.family, include=["TAGS"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in (
                "ClientException",
                "InvalidParameterException",
            ):
                raise as_gpuflow_error(
                    error, f"task definition family {request.family!r}"
                ) from error
            current = None
        if current is not None:
            tags = {tag["key"]: tag["value"] for tag in current.get("tags") or []}
            definition = current["taskDefinition"]
            if tags.get(FINGERPRINT_TAG) == fingerprint and definition.get("status") == "ACTIVE":
                return str(definition["taskDefinitionArn"])
        answer = call(
            ecs.register_task_definition,
            f"task definition family {request.family!r}",
            **request.to_api_with_fingerprint(self.tags),
        )
        arn = str(answer["taskDefinition"]["taskDefinitionArn"])
        _logger.info("Registered ECS task definition %s", arn)
        return arn

    # -- running ------------------------------------------------------------------------

    def run_task_request(
        self, job: JobSpec, task_definition: str, flow_run_id: str | None, client_token: str
    ) -> RunTaskRequest:
        overrides = self._overrides(job)
        tags = {**self.tags, JOB_TAG: job.name[:256]}
        if flow_run_id:
            tags[FLOW_RUN_TAG] = flow_run_id
        return RunTaskRequest(
            cluster=self.cluster,
            task_definition=task_definition,
            launch_type=self.launch_type,
            capacity_provider_strategy=self.capacity_provider_strategy or None,
            placement_constraints=self._gpu_type_placement(job),
            network_configuration=self._network_configuration(),
            overrides=overrides,
            tags=[Tag(key=k, value=v) for k, v in sorted(tags.items())],
            client_token=client_token,
        )

    def _network_configuration(self) -> NetworkConfiguration:
        return NetworkConfiguration(
            awsvpc_configuration=AwsVpcConfiguration(
                subnets=self.subnets,
                security_groups=self.security_groups or None,
                assign_public_ip="ENABLED" if self.assign_public_ip else "DISABLED",
            )
        )

    def _overrides(self, job: JobSpec) -> TaskOverride:
        command = list(job.argv)
        if self.change_to_workdir:
            # env(1) changes directory and execs argv, each element verbatim.
            command = ["env", "-C", str(job.workdir), "--", *command]
        where = (
            f"image {self.image}"
            if self.task_definition_arn is None
            else f"the image of task definition {self.task_definition_arn}"
        )
        command = checked_command(command, job.interpreter, where)
        override = ContainerOverride(
            name=self.container_name,
            command=command,
            environment=environment_pairs(job.env),
            # A registered definition carries the GPUs already; an existing ARN gets them here.
            resource_requirements=(
                gpu_requirements(job.gpus) if self.task_definition_arn is not None else None
            ),
        )
        return TaskOverride(container_overrides=[override])

    def _gpu_type_placement(self, job: JobSpec) -> list[PlacementConstraint] | None:
        """A memberOf constraint on the GPU-type attribute (cluster query language)."""
        if job.gpu_type is None:
            return None
        values = self.gpu_type_values.get(job.gpu_type, [job.gpu_type])
        for value in values:
            # Values go into an expression: plain names only, nothing that could change it.
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", value):
                raise EcsConfigError(
                    f"GPU type {job.gpu_type!r}: attribute value {value!r} is not a plain "
                    "name (letters, digits, '.', '_', '-')"
                )
        wanted = f"== {values[0]}" if len(values) == 1 else f"in [{', '.join(values)}]"
        return [
            PlacementConstraint(
                type="memberOf", expression=f"attribute:{self.gpu_type_attribute} {wanted}"
            )
        ]

    def preview(self, job: JobSpec) -> dict[str, Any]:
        """The RegisterTaskDefinition (unless the block names an existing ARN) and RunTask
        requests a run would send; no AWS call (a client is built only when the block
        names no region, to read the configured one)."""
        self.refuse_impossible(job)
        requests: dict[str, Any] = {}
        task_definition = self.task_definition_arn
        if task_definition is None:
            region = self.aws_credentials.region_name or self._client("ecs").meta.region_name
            definition = self.task_definition_request(job.gpus, region)
            requests["register_task_definition"] = definition.to_api_with_fingerprint(self.tags)
            task_definition = definition.family  # RunTask takes a family: its latest revision
        run = self.run_task_request(job, task_definition, None, "dry-run")
        requests["run_task"] = run.to_api()
        return requests

    def start_task(
        self, job: JobSpec, flow_run_id: str | None, client_token: str | None = None
    ) -> str:
        """Register (if needed) and start the job's task; returns the task ARN.

        ``client_token`` makes RunTask idempotent: a call repeated with it (botocore's
        retries, a repeated attempt) returns the task the first one started."""
        self.refuse_impossible(job)
        task_definition = self.ensure_task_definition(job.gpus)
        request = self.run_task_request(
            job, task_definition, flow_run_id, client_token or uuid.uuid4().hex
        )
        answer = call(
            self._client("ecs").run_task,
            f"job {job.name!r} on cluster {self.cluster!r}",
            **request.to_api(),
        )
        task = raise_for_run_failures(answer, f"job {job.name!r} on cluster {self.cluster!r}")
        return str(task["taskArn"])

    def describe_task(self, task_arn: str) -> dict[str, Any]:
        answer = call(
            self._client("ecs").describe_tasks,
            f"task {task_arn}",
            cluster=self.cluster,
            tasks=[task_arn],
        )
        tasks = answer.get("tasks") or []
        if not tasks:
            failures = answer.get("failures") or []
            raise EcsTaskError(f"ECS no longer knows task {task_arn}: {failures}", retryable=True)
        return dict(tasks[0])

    def running_gpuflow_tasks(self) -> list[dict[str, Any]]:
        """Descriptions (with tags) of the cluster's running tasks that gpuflow started."""
        ecs = self._client("ecs")
        arns: list[str] = []
        for page in ecs.get_paginator("list_tasks").paginate(
            cluster=self.cluster, desiredStatus="RUNNING", startedBy=STARTED_BY
        ):
            arns.extend(page.get("taskArns", []))
        tasks: list[dict[str, Any]] = []
        for start in range(0, len(arns), 100):  # DescribeTasks takes at most 100 tasks
            answer = call(
                ecs.describe_tasks,
                f"tasks of cluster {self.cluster!r}",
                cluster=self.cluster,
                tasks=arns[start : start + 100],
                include=["TAGS"],
            )
            tasks.extend(answer.get("tasks") or [])
        return tasks

    def stop_task(self, task_arn: str, reason: str) -> None:
        with contextlib.suppress(ClientError):  # already gone: nothing left to stop
            self._client("ecs").stop_task(cluster=self.cluster, task=task_arn, reason=reason[:255])

    async def run(self, job: JobSpec, on_line: LineHandler) -> JobResult:
        self.refuse_impossible(job)
        flow_run_id = _current_flow_run_id()
        started = time.monotonic()
        token = _attempt_token(job.name) if flow_run_id else None
        starting = asyncio.ensure_future(
            asyncio.to_thread(self.start_task, job, flow_run_id, token)
        )
        try:
            task_arn = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # RunTask is already on its way: once it answers, stop what it started.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                started_arn = await starting
                await _stop_despite_cancellation(self, started_arn, _CANCELLED_REASON)
            raise
        _logger.info("Started ECS task %s for job %s", task_arn, job.name)
        logs = LogFollower(
            self._client("logs"),
            self.log_group,
            log_stream_name(self.log_stream_prefix, self.container_name, task_arn),
            self.log_page_size,
        )
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

        async def deliver(lines: list[str]) -> None:
            for line in lines:
                tail.append(line)
                await on_line(line)

        try:
            stopped = await self._watch(task_arn, logs, deliver, started + job.timeout_s)
        except BaseException:
            await _stop_despite_cancellation(self, task_arn, _CANCELLED_REASON)
            raise
        if stopped is None:
            await asyncio.to_thread(
                self.stop_task,
                task_arn,
                f"gpuflow: job exceeded its timeout of {job.timeout_s:.0f}s",
            )
            await deliver(await asyncio.to_thread(logs.read_new))
            tail.append(f"gpuflow: job exceeded its timeout of {job.timeout_s:.0f}s")
            return JobResult(
                int(ExitCode.RESOURCE_ERROR), time.monotonic() - started, (), tuple(tail)
            )
        if stopped.get("stopCode") != "TaskFailedToStart":  # a container ran: it may have logged
            await self._drain(logs, deliver)
        outcome = classify_stopped_task(stopped, self.container_name)
        if outcome.exit_code != 0:
            tail.append(f"gpuflow: ECS task {task_arn} ended: {outcome.explanation}")
        return JobResult(
            outcome.exit_code, time.monotonic() - started, outcome.gpu_ids, tuple(tail)
        )

    async def _watch(
        self,
        task_arn: str,
        logs: LogFollower,
        deliver: Callable[[list[str]], Any],
        deadline: float,
    ) -> dict[str, Any] | None:
        """Follow logs and status until the task stops (its description) or the deadline (None)."""
        interval = self.poll_interval_s
        failures_in_a_row = 0
        while True:
            try:
                lines = await asyncio.to_thread(logs.read_new)
                await deliver(lines)
                task = await asyncio.to_thread(self.describe_task, task_arn)
                failures_in_a_row = 0
            except EcsTaskError as error:
                # A throttled or dropped poll must not cost a running GPU job: try again.
                failures_in_a_row += 1
                if not error.retryable or failures_in_a_row >= _POLL_FAILURES_TOLERATED:
                    raise
                _logger.warning("Polling ECS task %s failed, will retry: %s", task_arn, error)
                lines, task = [], {}
            if task.get("lastStatus") == "STOPPED":
                return task
            now = time.monotonic()
            if now >= deadline:
                return None
            # Back off while the task is quiet; come back quickly while it talks.
            interval = (
                self.poll_interval_s if lines else min(interval * 1.5, self.poll_max_interval_s)
            )
            await asyncio.sleep(min(interval, max(deadline - now, 0.0)))

    async def _drain(self, logs: LogFollower, deliver: Callable[[list[str]], Any]) -> None:
        """CloudWatch delivers the last lines a little after the task stops: wait briefly."""
        deadline = time.monotonic() + self.log_drain_s
        while True:
            try:
                lines = await asyncio.to_thread(logs.read_new)
            except EcsTaskError as error:
                # The task has ended; its outcome must not hang on its last log lines.
                _logger.warning("Could not read the last lines of %s: %s", logs.stream, error)
                return
            await deliver(lines)
            if (logs.seen_any and not lines) or time.monotonic() >= deadline:
                return
            await asyncio.sleep(min(self.poll_interval_s, max(deadline - time.monotonic(), 0.0)))


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def _attempt_token(job_name: str) -> str:
    """RunTask's clientToken for this attempt of the run's job: the same for every start
    of one attempt (an answer lost on the way cannot start a twin), new for each retry of
    the flow or task run (which must start a task of its own). 64 hex digits, ECS's most."""
    from prefect.runtime import flow_run, task_run

    attempt = (
        str(flow_run.id),
        str(flow_run.run_count),
        str(task_run.id or ""),
        str(task_run.run_count),
        job_name,
    )
    return hashlib.sha256("\0".join(attempt).encode()).hexdigest()


async def _stop_despite_cancellation(target: EcsTask, task_arn: str, reason: str) -> None:
    """Stop the task even while this coroutine is being cancelled."""
    stopping = asyncio.ensure_future(asyncio.to_thread(target.stop_task, task_arn, reason))
    with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
        await asyncio.shield(stopping)
    _logger.info("Stopped ECS task %s (%s)", task_arn, reason)
