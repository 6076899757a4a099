"""One AWS call at a time: errors that name what the call was about and say whether to retry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from gpuflow.compute.ecs.outcome import EcsTaskError

_T = TypeVar("_T")

_CONFIG_ERROR_CODES = frozenset(
    {
        "ClusterNotFoundException",
        "InvalidParameterException",
        "ClientException",
        "AccessDeniedException",
        "UnsupportedFeatureException",
        "PlatformUnknownException",
        "PlatformTaskDefinitionIncompatibilityException",
    }
)


def as_gpuflow_error(error: ClientError, what: str) -> EcsTaskError:
    code = error.response.get("Error", {}).get("Code", "Unknown")
    message = error.response.get("Error", {}).get("Message", str(error))
    if code in _CONFIG_ERROR_CODES:
        return EcsTaskError(f"ECS refused {what}: {code}: {message}", retryable=False)
    return EcsTaskError(f"ECS call for {what} failed: {code}: {message}", retryable=True)


def call(function: Callable[..., _T], what: str, **arguments: Any) -> _T:
    """One AWS call whose errors name what it was about and say whether to retry."""
    try:
        return function(**arguments)
    except ClientError as error:
        raise as_gpuflow_error(error, what) from error
    except BotoCoreError as error:
        raise EcsTaskError(f"AWS call for {what} failed: {error}", retryable=True) from error
