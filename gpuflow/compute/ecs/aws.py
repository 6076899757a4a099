"""One AWS call at a time: errors that name what the call was about and say whether to retry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from gpuflow.compute.ecs.outcome import EcsTaskError

_T = TypeVar("_T")

# Every AWS API operation the ECS backend calls, and the IAM actions each needs (Amazon
# ECS Developer Guide, "Grant permission to tag resources on creation": RegisterTaskDefinition
# and RunTask with tags also need ecs:TagResource; a task or execution role in the request
# or its task definition needs iam:PassRole). The Terraform task role grants exactly these
# (tests/infra/test_terraform.py), and the ECS tests fail on a call the code makes that is
# not listed (tests/ecs/conftest.py records what the ECS test servers receive).
API_CALLS: dict[str, tuple[str, ...]] = {
    "ecs:DescribeTaskDefinition": ("ecs:DescribeTaskDefinition",),
    "ecs:RegisterTaskDefinition": (
        "ecs:RegisterTaskDefinition",
        "ecs:TagResource",
        "iam:PassRole",
    ),
    "ecs:RunTask": ("ecs:RunTask", "ecs:TagResource", "iam:PassRole"),
    "ecs:DescribeTasks": ("ecs:DescribeTasks",),
    "ecs:ListTasks": ("ecs:ListTasks",),  # the reconciler's sweep for orphaned tasks
    "ecs:StopTask": ("ecs:StopTask",),
    "logs:GetLogEvents": ("logs:GetLogEvents",),
}
# Only with the block's create_log_group (off by default: Terraform creates the group).
OPTIONAL_API_CALLS: dict[str, tuple[str, ...]] = {"logs:CreateLogGroup": ("logs:CreateLogGroup",)}

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
