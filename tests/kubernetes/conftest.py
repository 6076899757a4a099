"""Fixtures of the Kubernetes backend tests: the test API server and a target pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prefect_kubernetes.credentials import KubernetesClusterConfig

from gpuflow.compute.kubernetes.manifest import PyTorchJobConfig
from gpuflow.compute.kubernetes.pool import DEFAULT_SERVICE_ACCOUNT, rbac_manifests
from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob
from tests.support.crd import load_pytorchjob_crd
from tests.support.kube_api_server import KubeApiServer
from tests.support.kube_rbac import RoleBasedAccess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pytorchjob_crd() -> dict[str, Any]:
    return load_pytorchjob_crd()


@pytest.fixture
def flow_pod_access() -> RoleBasedAccess:
    """The flow pod's service account (namespace default, where the jobs run) with the RBAC
    that deployments/kubernetes/rbac.yaml and Terraform give it: a call the code makes
    without a grant gets 403."""
    manifests = rbac_manifests("default", DEFAULT_SERVICE_ACCOUNT)
    return RoleBasedAccess(manifests, "default", DEFAULT_SERVICE_ACCOUNT)


@pytest.fixture
async def kube_api(
    pytorchjob_crd: dict[str, Any], flow_pod_access: RoleBasedAccess
) -> AsyncIterator[KubeApiServer]:
    server = KubeApiServer(pytorchjob_crd)
    server.access = flow_pod_access
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def nas(tmp_path: Path) -> Path:
    return tmp_path / "nas"


@pytest.fixture
def target(kube_api: KubeApiServer, nas: Path) -> KubernetesPyTorchJob:
    return KubernetesPyTorchJob(
        pytorchjob=PyTorchJobConfig(image="registry.example/gpuflow/i2v:1", nas_mount_path=nas),
        cluster_config=KubernetesClusterConfig(config=kube_api.kubeconfig(), context_name="test"),
        poll_interval_s=0.05,
        pending_deadline_s=5.0,
        image_pull_grace_s=0.3,
        log_drain_s=3.0,
        watch_timeout_s=5,
    )
