"""What an ECS answer means for a gpuflow job: the job's exit-code classes.

Two places tell how a task fared: the ``failures`` of a ``RunTask`` answer (the task
was never placed) and a stopped task's ``stopCode``, ``stoppedReason`` and its
container's ``exitCode``/``reason``. The vocabulary is AWS's own, from
https://docs.aws.amazon.com/AmazonECS/latest/developerguide/stopped-task-error-codes.html
and https://docs.aws.amazon.com/AmazonECS/latest/APIReference/api_Failure.html.

Capacity problems, spot interruptions and host trouble are retried; a container that
ran and exited keeps its own exit code (the flow classes it); an image that does not
exist or a secret that cannot be read is a configuration error and is not retried.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpuflow_progress import ExitCode

from gpuflow.core.errors import GpuflowError

# RunTask failure reasons that more capacity (later) can cure.
_CAPACITY_REASONS = ("RESOURCE:", "AGENT", "LOCATION")
# Text of a stoppedReason that says the image will never be pulled, whatever we retry.
_IMAGE_MISSING = ("not found", "manifest unknown", "does not exist", "access denied", "denied:")
_THROTTLED = ("toomanyrequests", "rate exceeded", "throttl", "timeout", "i/o timeout")


class StopCause(enum.Enum):
    """What a task's ``stopCode`` says about the job."""

    INTERRUPTED = "interrupted"  # the capacity went away (spot, host, its health): retry
    SCHEDULER = "scheduler"  # ECS itself stopped it: retry
    USER = "user"  # someone stopped it: honour that, no retry
    CONTAINER_EXITED = "container exited"  # the container's exit code decides
    FAILED_TO_START = "failed to start"  # the reason text decides (image, secret, NAS)


# Every member of TaskStopCode in the ECS service model (botocore 1.43.117), and only
# those: tests/unit/test_ecs_stop_codes.py compares the two.
STOP_CODES: dict[str, StopCause] = {
    "TaskFailedToStart": StopCause.FAILED_TO_START,
    "EssentialContainerExited": StopCause.CONTAINER_EXITED,
    "UserInitiated": StopCause.USER,
    "ServiceSchedulerInitiated": StopCause.SCHEDULER,
    "SpotInterruption": StopCause.INTERRUPTED,
    "TerminationNotice": StopCause.INTERRUPTED,
    "InfrastructureHealth": StopCause.INTERRUPTED,
}


class EcsTaskError(GpuflowError):
    """ECS could not run the task; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class EcsCapacityError(EcsTaskError):
    """No capacity for the task now (no GPU instance free, Fargate capacity exhausted)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


def raise_for_run_failures(answer: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The one task a ``RunTask`` answer started, or the error its ``failures`` describe."""
    failures: Sequence[Mapping[str, Any]] = answer.get("failures") or []
    tasks: Sequence[dict[str, Any]] = answer.get("tasks") or []
    if tasks and not failures:
        return tasks[0]
    described = "; ".join(
        f"{failure.get('reason', 'unknown')}"
        + (f" ({failure['detail']})" if failure.get("detail") else "")
        + (f" [{failure['arn']}]" if failure.get("arn") else "")
        for failure in failures
    )
    if not failures:
        # ECS placed nothing and said nothing: the cluster had no room for it.
        raise EcsCapacityError(f"ECS started no task for {what} and reported no reason")
    reasons = [str(failure.get("reason", "")) for failure in failures]
    if all(
        reason.startswith(_CAPACITY_REASONS) or "capacity" in reason.lower() for reason in reasons
    ):
        raise EcsCapacityError(f"no capacity to run {what} now: {described}")
    raise EcsTaskError(f"ECS refused to run {what}: {described}", retryable=False)


@dataclass(frozen=True)
class StoppedTask:
    """A stopped task read from ``DescribeTasks``: the job's exit code and how it ended."""

    exit_code: int
    explanation: str
    gpu_ids: tuple[str, ...]


def _container(task: Mapping[str, Any], container_name: str) -> Mapping[str, Any]:
    for container in task.get("containers") or []:
        if container.get("name") == container_name:
            return dict(container)
    return {}


def classify_stopped_task(task: Mapping[str, Any], container_name: str) -> StoppedTask:
    """Map a stopped task to the job's exit code, or raise what kept the job from running.

    A container that ran and exited keeps its exit code (an out-of-memory kill becomes a
    resource error). A task stopped before or around its container — spot reclaim, host
    terminated, capacity, image pull throttling — raises a retryable ``EcsTaskError``; an
    image or secret that cannot be found raises a non-retryable one.
    """
    stop_code = str(task.get("stopCode") or "")
    stopped_reason = str(task.get("stoppedReason") or "")
    container = _container(task, container_name)
    container_reason = str(container.get("reason") or "")
    exit_code = container.get("exitCode")
    gpu_ids = tuple(str(gpu) for gpu in container.get("gpuIds") or ())
    arn = task.get("taskArn", "task")
    summary = ", ".join(
        part
        for part in (
            f"stopCode={stop_code}" if stop_code else "",
            f"stoppedReason={stopped_reason!r}" if stopped_reason else "",
            f"container reason={container_reason!r}" if container_reason else "",
            f"exitCode={exit_code}" if exit_code is not None else "",
        )
        if part
    )

    cause = STOP_CODES.get(stop_code)
    if cause == StopCause.INTERRUPTED:
        raise EcsTaskError(f"ECS task {arn} was interrupted: {summary}", retryable=True)
    if cause == StopCause.SCHEDULER:
        raise EcsTaskError(f"ECS stopped task {arn}: {summary}", retryable=True)
    if cause == StopCause.USER:
        # Someone outside this flow stopped the task: honour it, do not start it again.
        raise EcsTaskError(f"ECS task {arn} was stopped by a user: {summary}", retryable=False)

    if "OutOfMemoryError" in container_reason or "OutOfMemory" in stopped_reason:
        return StoppedTask(int(ExitCode.RESOURCE_ERROR), f"out of memory: {summary}", gpu_ids)
    if exit_code is not None and (not stop_code or cause == StopCause.CONTAINER_EXITED):
        return StoppedTask(int(exit_code), summary or "container exited", gpu_ids)

    text = f"{stopped_reason} {container_reason}".lower()
    if "cannotpullcontainer" in text.replace(" ", ""):
        if any(marker in text for marker in _THROTTLED):
            raise EcsTaskError(f"ECS could not pull the image of {arn}: {summary}", retryable=True)
        if any(marker in text for marker in _IMAGE_MISSING):
            raise EcsTaskError(
                f"ECS could not pull the image of {arn} (check the image name and the "
                f"execution role): {summary}",
                retryable=False,
            )
    initializing = "resourceinitializationerror" in text.replace(" ", "")
    if initializing and "efs" in text:
        # A wrong file system ID, no mount target in the task's AZ, NFS (2049) blocked by
        # a security group, or an access point the task role may not use: another attempt
        # meets the same configuration.
        raise EcsTaskError(
            f"ECS could not mount the NAS (EFS) for {arn} (check the file system ID, a "
            f"mount target in each subnet's AZ, NFS 2049 in the security groups and the "
            f"task role's access): {summary}",
            retryable=False,
        )
    if initializing and ("secret" in text or "ssm" in text):
        raise EcsTaskError(
            f"ECS could not read a secret for {arn} (check the secret ARNs and the "
            f"execution role): {summary}",
            retryable=False,
        )
    # Everything else (host stopped, network interface timeouts, start failures without
    # an exit code) is infrastructure trouble: another attempt may well succeed.
    raise EcsTaskError(
        f"ECS task {arn} stopped without running to an end: {summary}", retryable=True
    )
