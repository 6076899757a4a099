"""ECS task definitions and run requests as typed data.

Every request gpuflow sends to ECS is built here from pydantic models whose field
aliases are the API's own names, then dumped to the dict boto3 takes (and botocore
validates against the service model before sending). Nothing is built from text
templates: a prompt or a path reaches the container as one argv element, verbatim.

A task definition is registered idempotently: its request is fingerprinted
(SHA-256 of the canonical JSON) and the fingerprint is stored as a tag on the
revision; a later registration with the same settings finds the tag on the
family's latest revision and reuses it instead of adding a revision.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gpuflow.core.errors import GpuflowError

FINGERPRINT_TAG = "gpuflow:taskdef-sha256"
FLOW_RUN_TAG = "gpuflow:flow-run-id"
JOB_TAG = "gpuflow:job"
STARTED_BY = "gpuflow"
NAS_VOLUME_NAME = "gpuflow-nas"

_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:(secretsmanager|ssm):[a-z0-9-]+:\d{12}:.+$")
FARGATE_PROVIDERS = frozenset({"FARGATE", "FARGATE_SPOT"})


class EcsConfigError(GpuflowError, ValueError):
    """The ECS settings cannot work as given; trying again will not help."""


class LaunchType(enum.StrEnum):
    FARGATE = "FARGATE"
    EC2 = "EC2"
    EXTERNAL = "EXTERNAL"


class _Api(BaseModel):
    """An ECS API shape: dumped by alias (the API's camelCase), unset fields left out."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class KeyValuePair(_Api):
    name: str
    value: str


class SecretRef(_Api):
    """An environment variable ECS fills from Secrets Manager or SSM: the ARN, never a value."""

    name: str
    value_from: str = Field(alias="valueFrom")


class ResourceRequirement(_Api):
    type: str
    value: str


class LogConfiguration(_Api):
    log_driver: str = Field(default="awslogs", alias="logDriver")
    options: dict[str, str]


class MountPoint(_Api):
    source_volume: str = Field(alias="sourceVolume")
    container_path: str = Field(alias="containerPath")
    read_only: bool = Field(default=False, alias="readOnly")


class LinuxParameters(_Api):
    shared_memory_size: int | None = Field(default=None, alias="sharedMemorySize")  # MiB


class ContainerDefinition(_Api):
    name: str
    image: str
    essential: bool = True
    memory: int | None = None
    command: list[str] | None = None
    environment: list[KeyValuePair] | None = None
    secrets: list[SecretRef] | None = None
    mount_points: list[MountPoint] | None = Field(default=None, alias="mountPoints")
    log_configuration: LogConfiguration | None = Field(default=None, alias="logConfiguration")
    resource_requirements: list[ResourceRequirement] | None = Field(
        default=None, alias="resourceRequirements"
    )
    linux_parameters: LinuxParameters | None = Field(default=None, alias="linuxParameters")


class EfsAuthorization(_Api):
    access_point_id: str | None = Field(default=None, alias="accessPointId")
    iam: str | None = None


class EfsVolumeConfiguration(_Api):
    file_system_id: str = Field(alias="fileSystemId")
    root_directory: str | None = Field(default=None, alias="rootDirectory")
    transit_encryption: str = Field(default="ENABLED", alias="transitEncryption")
    authorization_config: EfsAuthorization | None = Field(default=None, alias="authorizationConfig")


class Volume(_Api):
    name: str
    efs_volume_configuration: EfsVolumeConfiguration | None = Field(
        default=None, alias="efsVolumeConfiguration"
    )


class Tag(_Api):
    key: str
    value: str


class TaskDefinitionRequest(_Api):
    """The arguments of ``RegisterTaskDefinition``."""

    family: str
    container_definitions: list[ContainerDefinition] = Field(alias="containerDefinitions")
    network_mode: str = Field(default="awsvpc", alias="networkMode")
    requires_compatibilities: list[str] = Field(alias="requiresCompatibilities")
    cpu: str
    memory: str
    execution_role_arn: str | None = Field(default=None, alias="executionRoleArn")
    task_role_arn: str | None = Field(default=None, alias="taskRoleArn")
    volumes: list[Volume] | None = None

    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_api(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_api_with_fingerprint(self, tags: dict[str, str]) -> dict[str, Any]:
        request = self.to_api()
        all_tags = {**tags, FINGERPRINT_TAG: self.fingerprint()}
        request["tags"] = [Tag(key=k, value=v).to_api() for k, v in sorted(all_tags.items())]
        return request


class EfsNas(BaseModel):
    """The NAS as an EFS volume, mounted at the same path as everywhere else."""

    model_config = ConfigDict(frozen=True)

    file_system_id: str = Field(pattern=r"^fs-[0-9a-f]+$", description="EFS file system id.")
    access_point_id: str | None = Field(
        default=None, pattern=r"^fsap-[0-9a-f]+$", description="EFS access point (optional)."
    )
    root_directory: str | None = Field(
        default=None, description="Directory of the file system to mount (without an access point)."
    )
    mount_path: str = Field(
        description="Where the NAS is mounted in the container: the NAS root of every other host."
    )
    iam_authorization: bool = Field(
        default=True, description="Authorize the mount with the task role (EFS IAM)."
    )

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not PurePosixPath(value).is_absolute():
            raise ValueError(f"mount_path {value!r} must be an absolute path")
        return value

    def volume(self) -> Volume:
        authorization = None
        if self.access_point_id or self.iam_authorization:
            authorization = EfsAuthorization(
                access_point_id=self.access_point_id,
                iam="ENABLED" if self.iam_authorization else None,
            )
        return Volume(
            name=NAS_VOLUME_NAME,
            efs_volume_configuration=EfsVolumeConfiguration(
                file_system_id=self.file_system_id,
                # An access point fixes the root itself; ECS refuses both together.
                root_directory=None if self.access_point_id else self.root_directory,
                authorization_config=authorization,
            ),
        )

    def mount_point(self) -> MountPoint:
        return MountPoint(source_volume=NAS_VOLUME_NAME, container_path=self.mount_path)


def secret_refs(secrets: dict[str, SecretStr]) -> list[SecretRef]:
    """Environment secrets as ARNs; a value that is not an ARN is refused without echoing it."""
    refs = []
    for name, arn in sorted(secrets.items()):
        if not _SECRET_ARN.match(arn.get_secret_value()):
            raise EcsConfigError(
                f"secret {name!r} must be a Secrets Manager or SSM parameter ARN "
                "(arn:aws:secretsmanager:... or arn:aws:ssm:...), never the secret's value"
            )
        refs.append(SecretRef(name=name, value_from=arn.get_secret_value()))
    return refs


def gpu_requirements(gpus: int) -> list[ResourceRequirement] | None:
    return [ResourceRequirement(type="GPU", value=str(gpus))] if gpus > 0 else None


def environment_pairs(environment: dict[str, str]) -> list[KeyValuePair] | None:
    if not environment:
        return None
    return [KeyValuePair(name=k, value=v) for k, v in sorted(environment.items())]


def awslogs(group: str, region: str, stream_prefix: str) -> LogConfiguration:
    return LogConfiguration(
        options={
            "awslogs-group": group,
            "awslogs-region": region,
            "awslogs-stream-prefix": stream_prefix,
        }
    )


def log_stream_name(stream_prefix: str, container_name: str, task_arn: str) -> str:
    """The awslogs driver's stream: ``<prefix>/<container>/<task id>``."""
    return f"{stream_prefix}/{container_name}/{task_arn.rsplit('/', 1)[-1]}"


class CapacityProviderItem(_Api):
    capacity_provider: str = Field(alias="capacityProvider")
    weight: int = Field(default=1, ge=0, le=1000)
    base: int = Field(default=0, ge=0, le=100000)


class ContainerOverride(_Api):
    name: str
    command: list[str] | None = None
    environment: list[KeyValuePair] | None = None
    resource_requirements: list[ResourceRequirement] | None = Field(
        default=None, alias="resourceRequirements"
    )


class AwsVpcConfiguration(_Api):
    subnets: list[str]
    security_groups: list[str] | None = Field(default=None, alias="securityGroups")
    assign_public_ip: str = Field(alias="assignPublicIp")


class NetworkConfiguration(_Api):
    awsvpc_configuration: AwsVpcConfiguration = Field(alias="awsvpcConfiguration")


# RunTask (API Reference): "A total of 8192 characters are allowed for overrides. This
# limit includes the JSON formatting characters of the override structure."
OVERRIDES_MAX_CHARS = 8192


class TaskOverride(_Api):
    container_overrides: list[ContainerOverride] = Field(alias="containerOverrides")

    def json_length(self) -> int:
        """The overrides' length as sent: botocore's compact JSON, non-ASCII escaped (a
        CJK character counts six), the larger of the ways AWS could count it."""
        return len(json.dumps(self.to_api(), separators=(",", ":")))


class PlacementConstraint(_Api):
    type: Literal["memberOf", "distinctInstance"]
    expression: str | None = None


class RunTaskRequest(_Api):
    """The arguments of ``RunTask``: one task, tagged so the reconciler can find it."""

    cluster: str
    task_definition: str = Field(alias="taskDefinition")
    count: int = 1
    launch_type: LaunchType | None = Field(default=None, alias="launchType")
    capacity_provider_strategy: list[CapacityProviderItem] | None = Field(
        default=None, alias="capacityProviderStrategy"
    )
    network_configuration: NetworkConfiguration = Field(alias="networkConfiguration")
    placement_constraints: list[PlacementConstraint] | None = Field(
        default=None, alias="placementConstraints"
    )
    overrides: TaskOverride
    started_by: str = Field(default=STARTED_BY, alias="startedBy")
    tags: list[Tag]
    client_token: str = Field(alias="clientToken", max_length=64)
