"""End to end against a real cluster with the Kubeflow training operator (kind works).

Runs only when ``KUBECONFIG`` points at such a cluster; see README.md ("Kubernetes
backend"). No GPUs needed: the jobs ask for none. ``GPUFLOW_E2E_NAMESPACE`` (default
``default``) and ``GPUFLOW_E2E_IMAGE`` (default ``python:3.12-slim``, must be pullable
by the nodes) adjust it. The test creates and removes a small PVC as the "NAS".
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import (
    ApiextensionsV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1ObjectMeta,
    V1PersistentVolumeClaim,
    V1PersistentVolumeClaimSpec,
    V1VolumeResourceRequirements,
)
from kubernetes_asyncio.client.exceptions import ApiException
from prefect_kubernetes.credentials import KubernetesClusterConfig

from gpuflow.compute.base import JobSpec
from gpuflow.compute.kubernetes.manifest import (
    CRD_NAME,
    GROUP,
    JOB_LABEL,
    PLURAL,
    VERSION,
    PyTorchJobConfig,
)
from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob
from tests.kubernetes.test_lifecycle import INJECTIONS, Lines

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="set KUBECONFIG to a cluster with the Kubeflow training operator (kind works; "
        "see README.md, Kubernetes backend) to run the end-to-end tests",
    ),
]

NAMESPACE = os.environ.get("GPUFLOW_E2E_NAMESPACE", "default")
IMAGE = os.environ.get("GPUFLOW_E2E_IMAGE", "python:3.12-slim")
PROGRAM = (
    "import sys, time\n"
    "from pathlib import Path\n"
    'print(\'::gpuflow:: {"v":1,"kind":"progress","done":1,"total":2}\', flush=True)\n'
    "print('prompt=' + repr(sys.argv[1]), flush=True)\n"
    "time.sleep(float(sys.argv[3]))\n"
    "sys.exit(int(sys.argv[2]))\n"
)


@pytest.fixture
async def nas_claim() -> AsyncIterator[str]:
    """A small PVC standing in for the NAS; skip when the training operator is missing."""
    kubeconfig = os.environ["KUBECONFIG"]
    client = await kube_config.new_client_from_config(config_file=kubeconfig)
    async with client:
        try:
            await ApiextensionsV1Api(client).read_custom_resource_definition(CRD_NAME)
        except ApiException as error:
            pytest.skip(f"cluster of {kubeconfig} has no {CRD_NAME} ({error.reason})")
        name = f"gpuflow-e2e-{uuid.uuid4().hex[:6]}"
        claim = V1PersistentVolumeClaim(
            metadata=V1ObjectMeta(name=name),
            spec=V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=V1VolumeResourceRequirements(requests={"storage": "16Mi"}),
            ),
        )
        await CoreV1Api(client).create_namespaced_persistent_volume_claim(NAMESPACE, claim)
        try:
            yield name
        finally:
            await CoreV1Api(client).delete_namespaced_persistent_volume_claim(name, NAMESPACE)


def _target(claim: str, mount: Path) -> KubernetesPyTorchJob:
    with Path(os.environ["KUBECONFIG"]).open() as handle:
        kubeconfig = yaml.safe_load(handle)
    return KubernetesPyTorchJob(
        pytorchjob=PyTorchJobConfig(
            namespace=NAMESPACE,
            image=IMAGE,
            gpus_per_replica=0,
            tolerations=[],
            cpu="100m",
            memory="128Mi",
            shm_size="64Mi",
            nas_claim_name=claim,
            nas_mount_path=mount,
        ),
        cluster_config=KubernetesClusterConfig(
            config=kubeconfig, context_name=kubeconfig["current-context"]
        ),
        poll_interval_s=1.0,
        pending_deadline_s=600.0,
    )


def _job(mount: Path, prompt: str, exit_code: int, sleep_s: float = 0.0) -> JobSpec:
    return JobSpec(
        name=f"e2e-{uuid.uuid4().hex[:6]}",
        argv=["python", "-c", PROGRAM, prompt, str(exit_code), str(sleep_s)],
        workdir=mount / "workspace",
        gpus=0,
        timeout_s=600,
    )


async def test_a_job_runs_and_reports_its_prompt_verbatim(nas_claim: str, tmp_path: Path) -> None:
    prompt = INJECTIONS[1]
    lines = Lines()

    result = await _target(nas_claim, tmp_path).run(_job(tmp_path, prompt, 0), lines)

    assert result.exit_code == 0, result.last_lines
    assert f"prompt={prompt!r}" in lines.lines
    assert list((tmp_path / "workspace" / "logs").glob("*-master-0.log"))


async def test_a_failing_job_reports_its_exit_class(nas_claim: str, tmp_path: Path) -> None:
    result = await _target(nas_claim, tmp_path).run(_job(tmp_path, "x", 2), Lines())

    assert result.exit_code == 2


async def test_cancelling_deletes_the_job(nas_claim: str, tmp_path: Path) -> None:
    lines = Lines()
    job = _job(tmp_path, "x", 0, sleep_s=600)
    run = asyncio.create_task(_target(nas_claim, tmp_path).run(job, lines))
    for _ in range(300):
        if lines.lines:
            break
        await asyncio.sleep(1)
    assert lines.lines, "the job never started"

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    client = await kube_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with client:
        remaining = await CustomObjectsApi(client).list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, label_selector=f"{JOB_LABEL}={job.name}"
        )
    # Foreground deletion: gone, or marked for deletion while its pods stop.
    assert all(item["metadata"].get("deletionTimestamp") for item in remaining["items"])
