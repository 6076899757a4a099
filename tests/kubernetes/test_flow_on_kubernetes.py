"""The whole generate-video flow with its GPU job as a PyTorchJob: a real Prefect server,
the stack saved and loaded with the Kubernetes target, the test API server playing the
cluster (its kubelet runs the job's container command on this machine)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.schemas.objects import State
from prefect_kubernetes.credentials import KubernetesClusterConfig

from gpuflow.compute.kubernetes.manifest import PyTorchJobConfig
from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob
from gpuflow.core.request import VideoRequest
from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.generate_video import generate_video
from gpuflow.pipeline.stack import GpuflowStack
from tests.support.kube_api_server import KubeApiServer, run_containers_locally
from tests.support.kube_rbac import RoleBasedAccess

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(
    pytorchjob_crd: dict[str, Any], flow_pod_access: RoleBasedAccess
) -> Iterator[KubeApiServer]:
    """The test API server on a loop of its own: the flow runs in another one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kube-api", daemon=True)
    thread.start()

    async def start() -> KubeApiServer:
        server = KubeApiServer(pytorchjob_crd)
        server.script = run_containers_locally
        server.access = flow_pod_access
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def kubernetes_stack(
    prefect_server: LocalServer,
    layout: EmbeddedLayout,
    gpu_limit_name: str,
    cluster: KubeApiServer,
) -> str:
    target = KubernetesPyTorchJob(
        pytorchjob=PyTorchJobConfig(
            image="registry.example/gpuflow/i2v:1", nas_mount_path=layout.nas_root
        ),
        cluster_config=KubernetesClusterConfig(config=cluster.kubeconfig(), context_name="test"),
        poll_interval_s=0.1,
        pending_deadline_s=60,
    )
    stack = layout.stack().model_copy(update={"gpu_limit": gpu_limit_name, "compute": target})
    name = f"k8s-{uuid.uuid4().hex[:8]}"
    asyncio.run(bootstrap(stack, name, gpu_slots=2))
    return name


def test_the_flow_runs_its_gpu_job_as_a_pytorchjob(
    layout: EmbeddedLayout, kubernetes_stack: str, cluster: KubeApiServer
) -> None:
    # YAML that would inject, and CJK text long enough to break an argv-size limit
    # (4,000 characters, the request's most): it reaches the job whole, through a file.
    prompt = 'pan left "slowly"\n---\nkind: Pod\n' + "慢慢向左平移、山丘在晨雾中。" * 280
    assert len(prompt) <= 4000
    request = VideoRequest(
        prompt=prompt,
        image_uri=layout.seed_samples(),
        resolution="128x96",
        num_frames=9,
        fps=8,
    )
    loaded: object = asyncio.run(GpuflowStack.aload(kubernetes_stack))
    assert isinstance(loaded, GpuflowStack)
    assert isinstance(loaded.compute, KubernetesPyTorchJob)

    async def run() -> object:
        return await generate_video(request=request, stack=kubernetes_stack, return_state=True)

    state = asyncio.run(run())

    assert isinstance(state, State)
    assert state.is_completed(), state.message
    uri = state.result()
    assert isinstance(uri, str) and uri.endswith("video.mp4")
    (create,) = cluster.requests_to("POST", "/pytorchjobs")
    command = create.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert not any("慢慢" in part or "kind: Pod" in part for part in command)
    [prompt_file] = [part for part in command if part.startswith("--prompt-file=")]
    assert prompt_file.endswith("/prompt.txt")
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    job_lines = [line for log in cluster.logs.values() for line in log.lines]
    assert any(f"prompt: {len(prompt)} characters, sha256 {digest}" in line for line in job_lines)
    assert not cluster.requests_to("DELETE", "/pytorchjobs/")
