"""Reading a PyTorchJob and its pods: job phase, why a pod is not running, exit codes.

Pure functions over what the API returns (the job as a dict, pods as the client's
``V1Pod`` models), so the lifecycle code in ``gpuflow/compute/kubernetes/`` stays about
talking to the cluster and these rules can be read in one place.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from gpuflow_progress import ExitCode

from gpuflow.core.errors import GpuflowError


class JobPhase(enum.StrEnum):
    """The training operator's job conditions, latest first wins."""

    PENDING = "Pending"  # no condition yet
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED)


@dataclass(frozen=True)
class JobStatus:
    phase: JobPhase
    reason: str
    message: str
    resource_version: str


def job_status(job: dict[str, Any]) -> JobStatus:
    """The phase of a PyTorchJob object: its newest condition whose status is True."""
    conditions = job.get("status", {}).get("conditions") or []
    phase, reason, message = JobPhase.PENDING, "", ""
    for condition in conditions:
        if condition.get("status") != "True":
            continue
        try:
            phase = JobPhase(condition.get("type", ""))
        except ValueError:
            continue
        reason, message = condition.get("reason", ""), condition.get("message", "")
    # A terminal condition is final even if the operator lists it before another one.
    for condition in conditions:
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded", "Failed"):
            phase = JobPhase(condition["type"])
            reason, message = condition.get("reason", ""), condition.get("message", "")
    version = str(job.get("metadata", {}).get("resourceVersion", ""))
    return JobStatus(phase, reason, message, version)


class JobStartError(GpuflowError):
    """A PyTorchJob's pods could not start; the message says which pod and why."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self._retryable = retryable

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self._retryable


class Blocker(enum.Enum):
    """Why a pod is not running yet, and how long that may last."""

    UNSCHEDULABLE = "unschedulable"  # may clear (autoscaler, other jobs ending)
    IMAGE_PULL = "image pull failing"  # may clear (network): fail after a grace period
    REGISTRY_THROTTLED = "registry throttling"  # clears by itself: kubelet backs off, we wait
    INVALID_IMAGE = "invalid image"  # never clears
    IMAGE_NOT_FOUND = "image not found or access denied"  # never clears
    CREATE_CONTAINER = "container cannot be created"  # never clears (config)

    @property
    def fatal(self) -> bool:
        return self in (Blocker.INVALID_IMAGE, Blocker.IMAGE_NOT_FOUND, Blocker.CREATE_CONTAINER)


@dataclass(frozen=True)
class PodProblem:
    pod: str
    blocker: Blocker
    message: str

    def describe(self) -> str:
        return f"pod {self.pod}: {self.blocker.value}: {self.message}"


_THROTTLED = re.compile(r"429|too ?many ?requests|rate.?limit|pull.?limit|throttl", re.IGNORECASE)
_NOT_FOUND = re.compile(
    r"manifest unknown|not found|does not exist|unauthorized|denied|authentication required",
    re.IGNORECASE,
)


def pod_problem(pod: Any) -> PodProblem | None:
    """What keeps ``pod`` (a ``V1Pod``) from running, if anything worth reporting."""
    name = pod.metadata.name
    status = pod.status
    if status is None:
        return None
    for condition in status.conditions or []:
        if (
            condition.type == "PodScheduled"
            and condition.status == "False"
            and condition.reason == "Unschedulable"
        ):
            return PodProblem(name, Blocker.UNSCHEDULABLE, condition.message or "")
    for container in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = container.state.waiting if container.state else None
        if waiting is None:
            continue
        reason, message = waiting.reason or "", waiting.message or ""
        if reason == "InvalidImageName":
            return PodProblem(name, Blocker.INVALID_IMAGE, f"{container.image}: {message}")
        if reason in ("CreateContainerError", "CreateContainerConfigError", "RunContainerError"):
            return PodProblem(name, Blocker.CREATE_CONTAINER, f"{reason}: {message}")
        if reason in ("ErrImagePull", "ImagePullBackOff"):
            if _THROTTLED.search(message):
                return PodProblem(name, Blocker.REGISTRY_THROTTLED, f"{container.image}: {message}")
            if _NOT_FOUND.search(message):
                return PodProblem(name, Blocker.IMAGE_NOT_FOUND, f"{container.image}: {message}")
            return PodProblem(name, Blocker.IMAGE_PULL, f"{container.image}: {message}")
    return None


def container_started(pod: Any, container_name: str) -> bool:
    """Whether ``container_name`` has logs to read (running or already finished)."""
    for container in (pod.status.container_statuses if pod.status else None) or []:
        if container.name == container_name and container.state is not None:
            return bool(container.state.running or container.state.terminated)
    return False


def container_exit(pod: Any, container_name: str) -> tuple[int, str] | None:
    """(exit code, reason) of ``container_name`` once it terminated, else None."""
    for container in (pod.status.container_statuses if pod.status else None) or []:
        if container.name != container_name or container.state is None:
            continue
        terminated = container.state.terminated
        if terminated is not None:
            return int(terminated.exit_code), terminated.reason or ""
    return None


# Signals from outside the job (preemption, eviction, node shutdown): resource trouble.
_SIGKILL, _SIGTERM = 137, 143
# The shell's "cannot execute" / "not found": the env's interpreter did not resolve.
_NOT_EXECUTABLE, _NOT_FOUND_EXIT = 126, 127


def exit_class_code(exit_code: int, reason: str, pod_reason: str = "") -> int:
    """The exit code gpuflow reports: the job's exit-code classes where the cause is known."""
    if 0 <= exit_code <= max(ExitCode):
        return exit_code
    if reason == "OOMKilled" or pod_reason in ("Evicted", "Preempted", "DeadlineExceeded"):
        return int(ExitCode.RESOURCE_ERROR)
    if exit_code in (_SIGKILL, _SIGTERM):
        return int(ExitCode.RESOURCE_ERROR)
    if exit_code in (_NOT_EXECUTABLE, _NOT_FOUND_EXIT):
        return int(ExitCode.ENVIRONMENT_ERROR)
    # Unknown codes stay as they are: JobFailedError treats them as infrastructure trouble.
    return exit_code
