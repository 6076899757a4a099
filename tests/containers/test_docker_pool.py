"""A Prefect `docker` worker (prefect-docker) runs generate-video in a container of the
flow image against the session's Prefect server, the NAS bind-mounted at its host path;
the watermarked video lands in the store. The same request on the process pool in the
same session gives the baseline wall time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer, stop_process
from tests.containers.conftest import FlowImage
from tests.integration.test_deployments import request_fields, wait_for_final
from tests.support.deployed import PREFECT, REPO, Deployed, cli_env
from tests.support.docker_engine import ca_bundle, docker
from tests.support.kept_caches import KEPT_NAS_DIRS
from tests.support.media import probe

# Two flow runs and, on a cold machine, the image build: vfs copies the whole image for
# each container, which on a loaded 2-core machine takes minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800), pytest.mark.suite_seconds(219)]

IMAGE_JOBS_ROOT = Path("/opt/gpuflow/jobs")
# Where a container finds the proxy's CA bundle, bind-mounted from the host: job envs the
# flow builds fetch packages through that proxy, as on the host.
CONTAINER_CA_BUNDLE = "/run/gpuflow/ca-bundle.pem"


@pytest.fixture(scope="module")
def docker_stack(prefect_server: LocalServer, layout: EmbeddedLayout) -> str:
    """The session's embedded stack as the flow container sees it: the same NAS and
    store paths, the jobs from the image."""
    name = f"docker-{uuid.uuid4().hex[:8]}"
    stack = layout.stack().model_copy(update={"jobs_root": IMAGE_JOBS_ROOT})
    asyncio.run(bootstrap(stack, name, gpu_slots=2))
    return name


@pytest.fixture(scope="module")
def docker_worker(
    deployed: Deployed,
    docker_cli: str,
    prefect_server: LocalServer,
    state_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """A real prefect-docker worker on the `normal` queue of the gpuflow-docker pool."""
    log_path = tmp_path_factory.mktemp("docker-worker") / "worker.log"
    env = {**cli_env(state_dir, prefect_server), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "gpuflow-docker",
             "--work-queue", "normal", "--type", "docker"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield log_path
    finally:
        stop_process(worker.pid)


def container_job_variables(layout: EmbeddedLayout, flow_image: FlowImage) -> dict[str, Any]:
    volumes = [f"{layout.store_root}:{layout.store_root}"]
    # The NAS's uv cache and bytecode store may be links to ones kept between sessions
    # (tests/conftest.py): the container needs their targets at the same paths too.
    for name in KEPT_NAS_DIRS:
        if (layout.nas_root / name).is_symlink():
            target = (layout.nas_root / name).resolve()
            volumes.append(f"{target}:{target}")
    env: dict[str, str] = {}
    bundle = ca_bundle()
    if bundle is not None:
        volumes.append(f"{bundle}:{CONTAINER_CA_BUNDLE}:ro")
        env["SSL_CERT_FILE"] = CONTAINER_CA_BUNDLE
    return {
        "image": flow_image.image,
        "image_pull_policy": "Never",
        "nas_mount_path": str(layout.nas_root),
        "volumes": volumes,
        "env": env,
        # No GPU on this machine: a device request for one would fail the container.
        "gpu_device_requests": [],
        # The NAS here belongs to the test's user, as a real NAS to its service user.
        "container_user": f"{os.getuid()}:{os.getgid()}",
    }


def containers_of(docker_cli: str, flow_image: FlowImage) -> list[str]:
    """Containers of the flow image that a Prefect docker worker created (it labels them
    io.prefect.*), not the session's own container of the image that other tests use."""
    listed = docker(
        docker_cli, "ps", "--all", "--quiet",
        "--filter", f"ancestor={flow_image.image}", "--filter", "label=io.prefect.version",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def run_deployment(
    deployment: str, parameters: dict[str, Any], job_variables: dict[str, Any] | None = None
) -> tuple[UUID, float]:
    async def create() -> UUID:
        async with get_client() as client:
            found = await client.read_deployment_by_name(f"generate-video/{deployment}")
            run = await client.create_flow_run_from_deployment(
                found.id, parameters=parameters, job_variables=job_variables
            )
            return run.id

    started = time.monotonic()
    run_id = asyncio.run(create())
    run = asyncio.run(wait_for_final(run_id, timeout_s=900))
    seconds = time.monotonic() - started
    assert run.state is not None and run.state.is_completed(), run.state
    return run_id, seconds


def test_a_docker_worker_runs_generate_video_in_the_flow_image(
    deployed: Deployed,
    docker_cli: str,
    flow_image: FlowImage,
    docker_stack: str,
    docker_worker: Path,
    layout: EmbeddedLayout,
) -> None:
    request = request_fields(layout)
    try:
        docker_run, docker_seconds = run_deployment(
            "generate-video-docker",
            {"request": request, "stack": docker_stack},
            container_job_variables(layout, flow_image),
        )
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{docker_worker.read_text()[-4000:]}") from None
    video = layout.store_root / "outputs" / str(docker_run) / "video.mp4"
    facts = probe(video)
    assert (facts.width, facts.height, facts.frames) == (128, 96, 9)
    assert not (layout.nas_root / "workspaces" / str(docker_run)).exists()
    # The job env the container built records the image's interpreter.
    configs = [path.read_text() for path in (layout.nas_root / "envs").glob("*/.venv/pyvenv.cfg")]
    assert any("home = /usr/bin" in config for config in configs), configs
    # The run's container is removed once it exits (auto_remove), a moment after the run
    # reports its final state.
    deadline = time.monotonic() + 180
    while (left := containers_of(docker_cli, flow_image)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], docker(docker_cli, "ps", "--all", "--filter", f"ancestor={flow_image.image}")

    process_run, process_seconds = run_deployment(
        "generate-video-process", {"request": request, "stack": deployed.stack}
    )
    assert (layout.store_root / "outputs" / str(process_run) / "video.mp4").is_file()
    print(
        f"\ngenerate-video wall time: docker pool (container of the flow image) "
        f"{docker_seconds:.1f} s, process pool {process_seconds:.1f} s"
    )
