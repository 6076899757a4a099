"""`prefect --no-prompt deploy` of a container deployment builds the flow image with
BuildKit and, with GPUFLOW_IMAGE_REGISTRY set, pushes it to that registry (a real one on
127.0.0.1); the deployment runs the image it built."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from gpuflow.ops.local_server import LocalServer, stop_process
from tests.support.deployed import PREFECT, REPO, Deployed, cli_env
from tests.support.docker_engine import (
    ca_bundle,
    docker,
    git_revision,
    registry_binary,
    registry_config,
    remove_tag,
)
from tests.support.s3_servers import free_port

# A full image build through prefect deploy, then the push of every layer.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800), pytest.mark.suite_seconds(288)]


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Distribution registry on 127.0.0.1: its host:port."""
    binary = registry_binary()
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    # The blobs outlive the session, as a team registry's do: a warm machine's push then
    # sends only the layers that changed (the dependency layer is most of the image).
    storage = Path(
        os.environ.get(
            "GPUFLOW_TEST_REGISTRY_STORAGE", Path.home() / ".cache" / "gpuflow-tests" / "registry"
        )
    )
    config.write_text(registry_config(storage, port))
    with (root / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "serve", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop_process(process.pid)
                pytest.fail(f"the registry did not answer: {(root / 'registry.log').read_text()}")
            time.sleep(0.3)
    try:
        yield address
    finally:
        stop_process(process.pid)


def test_deploy_builds_and_pushes_the_flow_image(
    deployed: Deployed,
    docker_cli: str,
    local_registry: str,
    prefect_server: LocalServer,
    state_dir: Path,
) -> None:
    tag = f"test-{uuid.uuid4().hex[:12]}"
    bundle = ca_bundle()
    env = {
        **cli_env(state_dir, prefect_server),
        "GPUFLOW_IMAGE_REGISTRY": f"{local_registry}/team/gpuflow",
        "GPUFLOW_IMAGE_TAG": tag,
        "GPUFLOW_BUILD_CA_BUNDLE": str(bundle) if bundle else "",
        "GPUFLOW_DOCKER": docker_cli,
    }
    env.pop("GPUFLOW_IMAGE", None)
    started = time.monotonic()
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", "generate-video-docker"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    output = deploy.stdout + deploy.stderr
    assert deploy.returncode == 0, output[-4000:]
    image = f"{local_registry}/team/gpuflow:{tag}"
    assert f"built {image}" in output, output[-4000:]
    print(f"\nprefect deploy (build + push of the flow image): {seconds:.1f} s")
    try:
        # The registry holds the tag, and the manifest the engine pushed.
        url = f"http://{local_registry}/v2/team/gpuflow/tags/list"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert tag in json.load(answer)["tags"]
        inspected = docker(docker_cli, "image", "inspect", image)
        assert inspected.returncode == 0, inspected.stderr
        labels = json.loads(inspected.stdout)[0]["Config"]["Labels"]
        assert labels["org.opencontainers.image.revision"] == git_revision()

        async def deployed_image() -> object:
            async with get_client() as client:
                found = await client.read_deployment_by_name("generate-video/generate-video-docker")
                return (found.job_variables or {}).get("image")

        assert asyncio.run(deployed_image()) == image
    finally:
        remove_tag(docker_cli, image)
