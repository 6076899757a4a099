"""Errors a user can cause or meet, each naming the value at fault.

``retryable`` tells the flow whether trying again can help: resource and
infrastructure failures can; config, input and logic errors cannot.
"""

from __future__ import annotations

import errno

from gpuflow_progress import ExitCode


class GpuflowError(Exception):
    """Base of every error gpuflow raises on purpose."""

    retryable = False


class RequestError(GpuflowError, ValueError):
    """The request itself is invalid (refused before anything is downloaded)."""


class UriError(GpuflowError, ValueError):
    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"invalid object URI {uri!r}: {reason}")
        self.uri = uri


class ObjectNotFoundError(GpuflowError, FileNotFoundError):
    def __init__(self, uri: str, reason: str = "no such object") -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri


class StoreError(GpuflowError):
    """A transfer failed for a reason outside the request (disk, network)."""

    retryable = True


class StoreAccessError(GpuflowError, PermissionError):
    """The store refused the credentials or the operation: retrying cannot help."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri


class IntegrityError(StoreError):
    """Transferred bytes do not match the object's size or checksum (retrying may help)."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: integrity check failed: {reason}")
        self.uri = uri


class DiskFullError(GpuflowError, OSError):
    """No space (or quota) left where gpuflow writes: final until someone frees space."""

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(error.errno, f"{path}: no space left ({error.strerror or error})")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class WorkspacePathError(GpuflowError, ValueError):
    def __init__(self, name: str, workspace: str) -> None:
        super().__init__(f"path {name!r} escapes the workspace {workspace}")
        self.name = name


class ModelCacheError(GpuflowError):
    retryable = True


class EnvironmentBuildError(GpuflowError):
    """uv could not build a job's environment; ``details`` holds uv's own words."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(f"{message}\n{details}".rstrip())
        self.details = details


class GpuCapacityError(RequestError):
    """A request asks for more GPUs than the limit will ever grant."""


class JobFailedError(GpuflowError):
    """A GPU job ended with a non-zero exit code; its class decides whether to retry."""

    def __init__(self, exit_code: int, message: str) -> None:
        self.exit_code = exit_code
        self.exit_class = exit_class(exit_code)
        label = self.exit_class.name.lower().replace("_", " ") if self.exit_class else "unknown"
        super().__init__(f"job failed with exit code {exit_code} ({label}): {message}")

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        # Unknown codes (signals, the runtime's own) are infrastructure trouble: retry.
        return self.exit_class in (None, ExitCode.RESOURCE_ERROR, ExitCode.ENVIRONMENT_ERROR)


def exit_class(exit_code: int) -> ExitCode | None:
    try:
        return ExitCode(exit_code)
    except ValueError:
        return None


class NotFoundError(GpuflowError, LookupError):
    """Something the user named (a run, a deployment) does not exist."""
