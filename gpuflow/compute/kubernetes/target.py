"""The Kubernetes compute target: the GPU job as a Kubeflow PyTorchJob (Master + Workers).

The prefect-kubernetes worker launches only batch/v1 Jobs, so the flow (itself a pod
of a ``kubernetes`` work pool) creates and watches the PyTorchJob through the
custom-objects API:

1. build the manifest as data (``manifest.py``), validate it against the CRD schema the
   cluster serves (``crd.py``), and create it with ``fieldValidation=Strict``; secret
   values go into a Secret of their own, owned by the job, never the manifest;
2. watch its conditions with the watch API from a resourceVersion (``watch.py``);
3. while no pod runs, say why: unschedulable (the scheduler's words), image pull
   failures (after a grace period; registry throttling only waits), containers that
   cannot be created and invalid images (at once), and a pre-running deadline
   (``status.py``);
4. stream the Master's log into ``on_line`` and every pod's log into
   ``<workdir>/logs/`` while the pods exist, up to a size per pod and per job
   (``logs.py``);
5. class exit codes like every job's; on cancellation or any error, delete the job with
   propagationPolicy Foreground (``submission.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException
from prefect_kubernetes.credentials import KubernetesClusterConfig
from pydantic import Field, SecretStr

from gpuflow.compute.base import ComputeTarget, JobResult, JobSpec, LineHandler
from gpuflow.compute.kubernetes.manifest import (
    KubernetesConfigError,
    OwnerReference,
    PyTorchJobConfig,
    build_pytorchjob,
    job_name,
)
from gpuflow.compute.kubernetes.submission import PyTorchJobRun


class KubernetesPyTorchJob(ComputeTarget):
    """Runs each job as a Kubeflow PyTorchJob and follows it to the end."""

    _block_type_name = "gpuflow kubernetes pytorchjob"
    _block_type_slug = "gpuflow-kubernetes-pytorchjob"
    _description = "Run GPU jobs as Kubeflow PyTorchJobs (Master + Workers) on Kubernetes."

    pytorchjob: PyTorchJobConfig
    cluster_config: KubernetesClusterConfig | None = Field(
        default=None,
        description="Cluster to use; unset: in-cluster credentials, else KUBECONFIG.",
    )
    secret_env: dict[Annotated[str, Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")], SecretStr] = (
        Field(
            default_factory=dict,
            description="Env vars whose values go into a per-job Secret, never the manifest.",
        )
    )
    poll_interval_s: float = Field(default=5.0, gt=0, description="How often pods are checked.")
    pending_deadline_s: float = Field(
        default=900.0, gt=0, description="Longest wait for the job to start running."
    )
    image_pull_grace_s: float = Field(
        default=120.0, ge=0, description="How long a failing image pull may go on."
    )
    watch_timeout_s: int = Field(
        default=300, ge=1, description="Server-side timeout of one watch request."
    )
    log_drain_s: float = Field(
        default=30.0, ge=0, description="How long to wait for log streams after the job ends."
    )
    pod_log_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Most bytes of one pod's log copied to <workdir>/logs/ (the pod keeps "
        "the full log: kubectl logs).",
    )
    job_log_max_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1,
        description="Most bytes of all of a job's pod logs copied to <workdir>/logs/.",
    )

    def flow_pool_variables(self) -> dict[str, Any]:
        # Flow pods share the jobs' namespace and NAS claim; the jobs' service account is
        # not the flow pod's (that one holds the flow's Role), so it is not given here.
        config = self.pytorchjob
        return {
            "gpuflow_k8s_namespace": config.namespace,
            "gpuflow_nas_pvc_name": config.nas_claim_name,
            "gpuflow_nas_mount_path": str(config.nas_mount_path),
        }

    def require_nas_at(self, nas_root: Path, step: str) -> None:
        if self.pytorchjob.nas_mount_path != PurePosixPath(nas_root):
            raise KubernetesConfigError(
                f"the {step} Kubernetes target mounts the NAS at "
                f"{self.pytorchjob.nas_mount_path} but the stack's nas_root is {nas_root}: "
                "mount it at the same path everywhere"
            )

    def pytorchjob_manifest(
        self, job: JobSpec, name: str, owner: OwnerReference | None = None
    ) -> dict[str, Any]:
        """The PyTorchJob ``name`` that runs ``job``; secret values stay in a Secret of
        their own (``<name>-env``) that the manifest only references. With such a Secret
        the job is created suspended: the Secret is then created owned by the job (so
        the garbage collector removes it with the job: the flow pod needs no patch or
        delete on Secrets), and the job resumed."""
        return build_pytorchjob(
            self.pytorchjob,
            job,
            name=name,
            secret_env_name=f"{name}-env" if self.secret_env else None,
            secret_env_keys=tuple(self.secret_env),
            owner=owner,
            pending_allowance_s=self.pending_deadline_s,
            suspended=bool(self.secret_env),
        )

    def preview(self, job: JobSpec) -> dict[str, Any]:
        self._check_job(job)
        return {"pytorchjob": self.pytorchjob_manifest(job, job_name(job.name))}

    async def run(self, job: JobSpec, on_line: LineHandler) -> JobResult:
        self._check_job(job)
        async with self._api_client() as api:
            return await PyTorchJobRun(self, api, job, on_line).run()

    def _check_job(self, job: JobSpec) -> None:
        """Refuse, before anything is sent, a job its pods could never start."""
        for index, value in enumerate([*job.argv, *job.env.values()]):
            if "\x00" in value:
                where = f"argv[{index}]" if index < len(job.argv) else "an env value"
                raise KubernetesConfigError(
                    f"{where} of job {job.name!r} holds a NUL byte: {value!r}"
                )
        # The interpreter and workdir must resolve inside the pod, i.e. on the NAS.
        mount = self.pytorchjob.nas_mount_path
        for what, path in (("interpreter", job.argv[0]), ("workdir", str(job.workdir))):
            posix = PurePosixPath(path)
            if posix.is_absolute() and not posix.is_relative_to(mount):
                raise KubernetesConfigError(
                    f"job {what} {path!r} is not under the NAS mount path {str(mount)!r}: "
                    "the job's pods could not find it"
                )

    @contextlib.asynccontextmanager
    async def _api_client(self) -> AsyncIterator[ApiClient]:
        try:
            if self.cluster_config is not None:
                source = f"cluster_config (context {self.cluster_config.context_name!r})"
                client = await kube_config.new_client_from_config_dict(
                    self.cluster_config.config, context=self.cluster_config.context_name
                )
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                source = "the pod's service account"
                configuration = Configuration()
                kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
                client = ApiClient(configuration)
            else:
                source = f"KUBECONFIG={os.environ.get('KUBECONFIG', '~/.kube/config')!r}"
                client = await kube_config.new_client_from_config()
        except (ConfigException, OSError) as error:
            raise KubernetesConfigError(
                f"no usable Kubernetes credentials from {source}: {error}; set the block's "
                "cluster_config, run in a pod, or point KUBECONFIG at a kubeconfig"
            ) from None
        async with client:
            yield client
