"""The PyTorchJob manifest: typed configuration in, a ``kubeflow.org/v1`` object (a dict) out.

The manifest is assembled from data, never by filling a text template: the prompt
and every other user value travel as single ``command`` elements or env values,
so quotes, newlines or YAML in them stay inert. Secret values never enter it: the
job reads them through ``secretKeyRef``/``envFrom`` from Kubernetes Secrets.

Checking a manifest against the CRD before it is sent is ``gpuflow.compute.kubernetes.crd``.
"""

from __future__ import annotations

import math
import re
import secrets
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpuflow.compute.base import JobSpec
from gpuflow.compute.interpreter_check import checked_command
from gpuflow.compute.job_image import default_job_image
from gpuflow.core.errors import GpuflowError

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CRD_NAME = f"{PLURAL}.{GROUP}"
# The training operator runs the container of this name and reads its exit code.
CONTAINER_NAME = "pytorch"
# Labels the training operator puts on every pod of a job.
OPERATOR_JOB_LABEL = "training.kubeflow.org/job-name"
OPERATOR_ROLE_LABEL = "training.kubeflow.org/replica-type"
JOB_LABEL = "gpuflow.io/job"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"  # noqa: E501
_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A qualified name with an optional DNS prefix: label keys, resource names, annotation keys.
_QUALIFIED = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # noqa: E501
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# Operator-made names (<job>-worker-12, services) must stay DNS labels of <= 63 characters.
_MAX_JOB_NAME = 48

DnsLabel = Annotated[str, Field(pattern=_DNS_LABEL, min_length=1, max_length=63)]
Quantity = Annotated[str, Field(pattern=_QUANTITY)]
# Defaults per GPU of a replica (a CPU-only replica counts as one): what a diffusion
# job's data loading and host-side tensors need beside each GPU.
CPU_PER_GPU = 4
MEMORY_PER_GPU_GIB = 16
_QUANTITY_FACTORS: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def quantity_bytes(quantity: str) -> Decimal:
    """A Kubernetes quantity (8Gi, 500M, 1e9) as a number of bytes."""
    number = re.match(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", quantity)
    if number is None or quantity[number.end() :] not in _QUANTITY_FACTORS:
        raise KubernetesConfigError(f"{quantity!r} is not a Kubernetes quantity")
    return Decimal(number.group(0)) * _QUANTITY_FACTORS[quantity[number.end() :]]


QualifiedName = Annotated[str, Field(pattern=_QUALIFIED, max_length=253)]
LabelValue = Annotated[str, Field(pattern=_LABEL_VALUE, max_length=63)]


class KubernetesConfigError(GpuflowError, ValueError):
    """A configuration, job or credential the cluster can never accept (not retried)."""


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Toleration(_Config):
    key: QualifiedName | None = None
    operator: Literal["Exists", "Equal"] = "Exists"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Only for effect NoExecute: how long the pod stays bound."
    )

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError(f"toleration {self.key!r}: operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(f"toleration {self.key!r}: toleration_seconds needs effect NoExecute")
        return self

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = {"operator": self.operator}
        if self.key is not None:
            data["key"] = self.key
        if self.value is not None:
            data["value"] = self.value
        if self.effect is not None:
            data["effect"] = self.effect
        if self.toleration_seconds is not None:
            data["tolerationSeconds"] = self.toleration_seconds
        return data


class SecretEnvVar(_Config):
    """An env var the job reads from a key of an existing Kubernetes Secret."""

    name: Annotated[str, Field(pattern=_ENV_NAME)]
    secret_name: DnsLabel
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]


class HamiVgpu(_Config):
    """HAMi virtual GPUs: a share of a GPU's memory and cores, placed by HAMi's scheduler."""

    memory_mib: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="GPU memory per vGPU (nvidia.com/gpumem), MiB."
    )
    cores_percent: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, description="Share of a GPU's cores per vGPU (nvidia.com/gpucores)."
    )
    memory_resource: QualifiedName = "nvidia.com/gpumem"
    cores_resource: QualifiedName = "nvidia.com/gpucores"
    scheduler_name: DnsLabel = "hami-scheduler"
    annotations: dict[QualifiedName, str] = Field(
        default_factory=dict,
        description="Pod annotations HAMi reads, e.g. nvidia.com/use-gputype: A100.",
    )


class RunPolicy(_Config):
    # Running: when the job ends, pods still running (the Workers of a failed job) are
    # deleted and their GPUs freed; finished pods stay, so their exit codes and logs can
    # be read. None would leave such Workers holding GPUs until the TTL.
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = 3600
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Upper bound; the job's own timeout lowers it further."
    )
    backoff_limit: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class SchedulingPolicy(_Config):
    """Gang scheduling (Volcano / scheduler-plugins): all replicas start together or none."""

    queue: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    priority_class: DnsLabel | None = None
    min_available: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class PyTorchJobConfig(_Config):
    """How every PyTorchJob of a compute target is shaped; the job supplies argv and GPUs."""

    namespace: DnsLabel = "default"
    image: Annotated[str, Field(min_length=1, pattern=r"^\S+$")] = Field(
        default_factory=default_job_image,
        description="Image of the job's pods: the job image (docker/job.Dockerfile) in your "
        "registry; unset: gpuflow-job:<version>, for nodes that have the local build.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[DnsLabel] = Field(default_factory=list)
    service_account_name: DnsLabel | None = None
    worker_replicas: Annotated[int, Field(ge=0, le=1024)] | None = Field(
        default=None,
        description="Workers beside the Master; unset: derived from the job's GPUs.",
    )
    gpus_per_replica: Annotated[int, Field(ge=0, le=64)] = 1
    gpu_resource: QualifiedName = "nvidia.com/gpu"
    vgpu: HamiVgpu | None = None
    nproc_per_node: Annotated[str, Field(pattern=r"^(auto|cpu|gpu|[1-9][0-9]{0,3})$")] | None = (
        Field(default=None, description="torchrun processes per pod; unset: GPUs per replica.")
    )
    cpu: Quantity | None = Field(
        default=None,
        description=f"CPU of each replica; unset: {CPU_PER_GPU} per GPU of the replica.",
    )
    memory: Quantity | None = Field(
        default=None,
        description=f"Memory of each replica; unset: {MEMORY_PER_GPU_GIB}Gi per GPU of the "
        "replica plus shm_size (the in-memory /dev/shm is charged to the container's memory).",
    )
    gpu_type_label: QualifiedName = "nvidia.com/gpu.product"
    gpu_type_values: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="GPU type (h100) -> value of the node label (NVIDIA-H100-80GB-HBM3).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [
            Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        ]
    )
    spread: Literal["required", "preferred", "none"] = Field(
        default="preferred", description="podAntiAffinity of Master and Workers across nodes."
    )
    nas_claim_name: DnsLabel = "gpuflow-nas"
    nas_mount_path: PurePosixPath = Field(
        description="Where the NAS is mounted: the same path as everywhere else (venvs are not "
        "relocatable)."
    )
    shm_size: Quantity = "8Gi"
    network_resources: dict[QualifiedName, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Extra device resources per replica for multi-node jobs, e.g. "
        "{'vpc.amazonaws.com/efa': 4} (EFA, with the EFA device plugin); none by default.",
    )
    host_ipc: bool = Field(
        default=False,
        description="Share the node's IPC namespace (some NCCL transports want it); off: the "
        "pod's own /dev/shm (shm_size) serves NCCL within a pod.",
    )
    env: dict[Annotated[str, Field(pattern=_ENV_NAME)], str] = Field(default_factory=dict)
    secret_env: list[SecretEnvVar] = Field(default_factory=list)
    env_from_secrets: list[DnsLabel] = Field(default_factory=list)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    scheduling_policy: SchedulingPolicy | None = None
    kueue_queue: LabelValue | None = None
    labels: dict[QualifiedName, LabelValue] = Field(default_factory=dict)
    annotations: dict[QualifiedName, str] = Field(default_factory=dict)

    @field_validator("nas_mount_path")
    @classmethod
    def _absolute(cls, value: PurePosixPath) -> PurePosixPath:
        if not value.is_absolute() or value == PurePosixPath("/"):
            raise ValueError(f"nas_mount_path {str(value)!r} must be an absolute path below /")
        return value

    def replica_cpu(self) -> str:
        return self.cpu or str(CPU_PER_GPU * max(1, self.gpus_per_replica))

    def replica_memory(self) -> str:
        if self.memory:
            return self.memory
        gpus = max(1, self.gpus_per_replica)
        mib = MEMORY_PER_GPU_GIB * 1024 * gpus + math.ceil(quantity_bytes(self.shm_size) / 2**20)
        return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"

    def replicas_for(self, gpus: int) -> tuple[int, int]:
        """(workers, total replicas) for a job needing ``gpus`` GPUs over all replicas."""
        if self.worker_replicas is not None:
            workers = self.worker_replicas
            provided = (1 + workers) * self.gpus_per_replica
            if gpus != provided:
                raise KubernetesConfigError(
                    f"job needs {gpus} GPUs but the target is fixed at 1 master + {workers} "
                    f"workers x {self.gpus_per_replica} GPUs = {provided}"
                )
            return workers, 1 + workers
        if self.gpus_per_replica == 0:
            if gpus:
                raise KubernetesConfigError(f"job needs {gpus} GPUs but gpus_per_replica is 0")
            return 0, 1
        if gpus < 1 or gpus % self.gpus_per_replica:
            raise KubernetesConfigError(
                f"job needs {gpus} GPUs, not a positive multiple of gpus_per_replica "
                f"({self.gpus_per_replica})"
            )
        replicas = gpus // self.gpus_per_replica
        return replicas - 1, replicas

    def nproc_per_node_for(self) -> str:
        """``nprocPerNode`` as the operator gets it: torchrun processes per replica."""
        return self.nproc_per_node or (
            str(self.gpus_per_replica) if self.gpus_per_replica else "auto"
        )

    def launches_processes(self, gpus: int) -> int | None:
        """How many processes a job of ``gpus`` GPUs runs, all replicas together; None
        where torchrun decides (``auto``, ``cpu``, ``gpu``: more than one is possible)."""
        _, replicas = self.replicas_for(gpus)
        per_replica = self.nproc_per_node_for()
        return replicas * int(per_replica) if per_replica.isdigit() else None


def job_name(base: str) -> str:
    """A fresh PyTorchJob name for ``base``: a DNS-1035 label, unique per submission."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"j-{cleaned}".rstrip("-")
    cleaned = cleaned[: _MAX_JOB_NAME - 7].rstrip("-")
    return f"{cleaned}-{secrets.token_hex(3)}"


def label_value(text: str) -> str:
    """``text`` squeezed into a valid label value (for lookups by the job's own name)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


class OwnerReference(_Config):
    api_version: str
    kind: str
    name: str
    uid: str

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            # Deleting the owner with propagationPolicy Foreground waits for this job.
            "blockOwnerDeletion": True,
            "controller": False,
        }


def build_pytorchjob(
    config: PyTorchJobConfig,
    job: JobSpec,
    *,
    name: str,
    secret_env_name: str | None = None,
    secret_env_keys: tuple[str, ...] = (),
    owner: OwnerReference | None = None,
    pending_allowance_s: float = 0.0,
    suspended: bool = False,
) -> dict[str, Any]:
    """The PyTorchJob that runs ``job``: a Master and, for more GPUs, Workers.

    ``secret_env_name`` names a Secret holding ``secret_env_keys`` (env var name = key):
    the manifest references them; their values never appear in it. ``suspended`` creates
    the job with ``runPolicy.suspend`` (no pods until it is resumed, or Kueue admits it):
    time for its Secret to be created owned by it. The operator's
    deadline counts from creation, so it is the job's timeout plus ``pending_allowance_s``
    (the longest wait for pods to start).
    """
    if not re.match(_DNS_LABEL, name) or len(name) > _MAX_JOB_NAME:
        raise KubernetesConfigError(
            f"job name {name!r} is not a DNS label of <= {_MAX_JOB_NAME} chars"
        )
    workers, _ = config.replicas_for(job.gpus)
    labels = {**config.labels, JOB_LABEL: label_value(job.name)}
    if config.kueue_queue:
        labels[KUEUE_QUEUE_LABEL] = config.kueue_queue
    metadata: dict[str, Any] = {"name": name, "namespace": config.namespace, "labels": labels}
    if config.annotations:
        metadata["annotations"] = dict(config.annotations)
    if owner is not None:
        metadata["ownerReferences"] = [owner.manifest()]

    template = _pod_template(config, job, name, secret_env_name, secret_env_keys)
    replica_specs: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": "Never", "template": template}
    }
    if workers:
        replica_specs["Worker"] = {
            "replicas": workers,
            "restartPolicy": "Never",
            "template": template,
        }
    spec: dict[str, Any] = {
        "pytorchReplicaSpecs": replica_specs,
        "runPolicy": _run_policy(config, job.timeout_s + pending_allowance_s, suspended),
        "nprocPerNode": config.nproc_per_node_for(),
    }
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def _run_policy(config: PyTorchJobConfig, deadline_s: float, suspended: bool) -> dict[str, Any]:
    policy = config.run_policy
    # The operator enforces the job's timeout too, so a job outlives no dead watcher.
    deadline = int(deadline_s) + 1
    if policy.active_deadline_seconds is not None:
        deadline = min(deadline, policy.active_deadline_seconds)
    data: dict[str, Any] = {
        "cleanPodPolicy": policy.clean_pod_policy,
        "backoffLimit": policy.backoff_limit,
        "activeDeadlineSeconds": deadline,
    }
    if suspended:
        data["suspend"] = True
    if policy.ttl_seconds_after_finished is not None:
        data["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    scheduling = config.scheduling_policy
    if scheduling is not None:
        gang: dict[str, Any] = {}
        if scheduling.queue is not None:
            gang["queue"] = scheduling.queue
        if scheduling.priority_class is not None:
            gang["priorityClass"] = scheduling.priority_class
        if scheduling.min_available is not None:
            gang["minAvailable"] = scheduling.min_available
        data["schedulingPolicy"] = gang
    return data


def _pod_template(
    config: PyTorchJobConfig,
    job: JobSpec,
    name: str,
    secret_env_name: str | None,
    secret_env_keys: tuple[str, ...],
) -> dict[str, Any]:
    pod_labels = {JOB_LABEL: label_value(job.name)}
    if config.kueue_queue:
        pod_labels[KUEUE_QUEUE_LABEL] = config.kueue_queue
    metadata: dict[str, Any] = {"labels": pod_labels}
    spec: dict[str, Any] = {
        "containers": [_container(config, job, secret_env_name, secret_env_keys)],
        "volumes": [
            {"name": "nas", "persistentVolumeClaim": {"claimName": config.nas_claim_name}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
        ],
        "tolerations": [toleration.manifest() for toleration in config.tolerations],
        "enableServiceLinks": False,
    }
    if config.vgpu is not None:
        spec["schedulerName"] = config.vgpu.scheduler_name
        if config.vgpu.annotations:
            metadata["annotations"] = dict(config.vgpu.annotations)
    if config.service_account_name:
        spec["serviceAccountName"] = config.service_account_name
    if config.host_ipc:
        spec["hostIPC"] = True
    if config.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in config.image_pull_secrets]
    if job.gpu_type is not None:
        node_value = config.gpu_type_values.get(job.gpu_type, job.gpu_type)
        if not re.match(_LABEL_VALUE, node_value) or len(node_value) > 63:
            raise KubernetesConfigError(
                f"GPU type {job.gpu_type!r} is not a valid node label value"
            )
        spec["nodeSelector"] = {config.gpu_type_label: node_value}
    affinity = _spread(config.spread, name)
    if affinity is not None:
        spec["affinity"] = affinity
    if config.scheduling_policy and config.scheduling_policy.priority_class:
        spec["priorityClassName"] = config.scheduling_policy.priority_class
    return {"metadata": metadata, "spec": spec}


def _spread(mode: str, name: str) -> dict[str, Any] | None:
    term = {
        "labelSelector": {"matchLabels": {OPERATOR_JOB_LABEL: name}},
        "topologyKey": "kubernetes.io/hostname",
    }
    if mode == "required":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    if mode == "preferred":
        return {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term}
                ]
            }
        }
    return None


def _command(config: PyTorchJobConfig, job: JobSpec) -> list[str]:
    """``job.argv``, under the env's torchrun when the job runs more than one process:
    torchrun reads the operator's ``PET_*`` variables (nodes, processes per node, node
    rank, master address) and gives each process its ``RANK``. Behind the interpreter
    check: an image without the env's interpreter fails as a config error, saying so."""
    return checked_command(_launcher(config, job), job.interpreter, f"image {config.image}")


def _launcher(config: PyTorchJobConfig, job: JobSpec) -> list[str]:
    processes = config.launches_processes(job.gpus)
    if processes == 1:
        return list(job.argv)
    if job.torchrun is None:
        count = f"{processes} processes" if processes else "more than one process"
        raise KubernetesConfigError(
            f"job {job.name!r} runs {count} (nprocPerNode {config.nproc_per_node_for()!r} "
            f"on each of {config.replicas_for(job.gpus)[1]} replica(s)) but its environment "
            f"has no torchrun beside {job.argv[0]}: add torch to the job's project, or run "
            "it as one process"
        )
    return [job.torchrun, "--no-python", *job.argv]


def _container(
    config: PyTorchJobConfig,
    job: JobSpec,
    secret_env_name: str | None,
    secret_env_keys: tuple[str, ...],
) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": config.replica_cpu(), "memory": config.replica_memory()}
    limits.update({name: str(count) for name, count in config.network_resources.items()})
    if config.gpus_per_replica:
        limits[config.gpu_resource] = str(config.gpus_per_replica)
        if config.vgpu is not None and config.vgpu.memory_mib is not None:
            limits[config.vgpu.memory_resource] = str(config.vgpu.memory_mib)
        if config.vgpu is not None and config.vgpu.cores_percent is not None:
            limits[config.vgpu.cores_resource] = str(config.vgpu.cores_percent)
    env: list[dict[str, Any]] = [
        {"name": key, "value": value} for key, value in {**config.env, **job.env}.items()
    ]
    env += [
        {"name": var.name, "valueFrom": {"secretKeyRef": {"name": var.secret_name, "key": var.key}}}
        for var in config.secret_env
    ]
    if secret_env_name is not None:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret_env_name, "key": key}}}
            for key in secret_env_keys
        ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        # Exec form, one element per argument: nothing is parsed by a shell.
        "command": _command(config, job),
        "workingDir": str(job.workdir),
        "env": env,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [
            {"name": "nas", "mountPath": str(config.nas_mount_path)},
            {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 (the pod's own shm)
        ],
    }
    if config.env_from_secrets:
        container["envFrom"] = [
            {"secretRef": {"name": secret}} for secret in config.env_from_secrets
        ]
    return container
