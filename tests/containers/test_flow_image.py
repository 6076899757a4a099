"""The flow image builds from the repository and runs gpuflow as a non-root user; its
labels name the version and revision; the build secret (the proxy's CA) is in no layer;
a rebuild of unchanged sources comes from the layer cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.containers.conftest import FlowImage, RunningContainer, certificate_bodies
from tests.support.docker_engine import base_image, build_test_image, docker

# The first test's setup builds the image: on a cold machine that is minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800), pytest.mark.suite_seconds(983)]

_CHUNK = 8 << 20


def run_in(container: RunningContainer, *command: str) -> str:
    completed = container.exec(*command)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_runs_gpuflow_as_the_non_root_user(
    docker_cli: str, flow_image: FlowImage, flow_container: RunningContainer
) -> None:
    facts = json.loads(
        run_in(
            flow_container,
            "python",
            "-c",
            "import json, os, sys, gpuflow, ffmpeg, prefect;"
            "print(json.dumps({'uid': os.getuid(), 'python': sys.executable,"
            " 'base': os.path.realpath(sys._base_executable), 'prefect': prefect.__version__,"
            " 'ffmpeg': os.access(ffmpeg.FFMPEG_PATH, os.X_OK), 'cwd': os.getcwd(),"
            " 'jobs_root': os.environ['GPUFLOW_JOBS_ROOT']}))",
        )
    )
    assert facts["uid"] != 0
    assert facts["python"] == "/opt/venv/bin/python"
    assert facts["base"] == "/usr/bin/python3.11"
    assert facts["prefect"] == "3.9.1"
    assert facts["ffmpeg"] is True
    # Where prefect.yaml's pull step and GPUFLOW_JOBS_ROOT expect the code.
    assert facts["cwd"] == "/opt/gpuflow"
    assert facts["jobs_root"] == "/opt/gpuflow/jobs"
    listing = run_in(flow_container, "ls", "/opt/gpuflow/flows", "/opt/gpuflow/jobs")
    assert "generate_video.py" in listing
    assert "i2v" in listing
    assert "Usage: gpuflow" in run_in(flow_container, "gpuflow", "--help")
    # The image's default command is the CLI's help: `docker run gpuflow` explains itself.
    inspected = docker(docker_cli, "image", "inspect", flow_image.image)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    assert not config["Entrypoint"]
    assert "Usage: gpuflow" in run_in(flow_container, *config["Cmd"])


def test_labels_name_version_revision_and_base(docker_cli: str, flow_image: FlowImage) -> None:
    inspected = docker(docker_cli, "image", "inspect", flow_image.image)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "gpuflow"
    assert labels["org.opencontainers.image.version"] == flow_image.version
    assert labels["org.opencontainers.image.revision"] == flow_image.revision
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"] == base_image()
    assert config["User"] == "10001:10001"


def _occurrences(archive: Path, needles: set[bytes]) -> set[bytes]:
    """The needles found anywhere in ``archive`` (a `docker save` tar: every layer)."""
    found: set[bytes] = set()
    overlap = max(len(needle) for needle in needles)
    tail = b""
    with archive.open("rb") as file:
        while chunk := file.read(_CHUNK):
            window = tail + chunk
            found.update(needle for needle in needles if needle in window)
            tail = window[-overlap:]
    return found


def test_build_secret_is_in_no_layer(
    docker_cli: str, flow_image: FlowImage, flow_container: RunningContainer, tmp_path: Path
) -> None:
    history = docker(
        docker_cli, "history", "--no-trunc", "--format", "{{.CreatedBy}}", flow_image.image
    )
    assert history.returncode == 0, history.stderr
    assert flow_image.secret_marker not in history.stdout
    assert "BEGIN CERTIFICATE" not in history.stdout
    # The proxy's certificates: those of the secret that Debian's bundle in the image
    # lacks. Each is looked for by the first line of its body, as a PEM file holds it.
    image_bundle = run_in(flow_container, "cat", "/etc/ssl/certs/ca-certificates.crt")
    proxy_certificates = flow_image.secret_certificates - certificate_bodies(image_bundle)
    needles = {flow_image.secret_marker.encode()} | {
        body[:64].encode() for body in proxy_certificates
    }
    archive = tmp_path / "image.tar"
    saved = docker(docker_cli, "save", "--output", str(archive), flow_image.image, timeout=600)
    assert saved.returncode == 0, saved.stderr
    size_mib = archive.stat().st_size >> 20
    print(f"\nlooked for {len(proxy_certificates)} proxy CA(s) and the marker in {size_mib} MiB")
    assert _occurrences(archive, needles) == set()


def test_unchanged_sources_rebuild_from_the_layer_cache(
    docker_cli: str, flow_image: FlowImage
) -> None:
    rebuilt = build_test_image(
        docker_cli,
        "flow.Dockerfile",
        "gpuflow",
        build_args={"VERSION": flow_image.version, "REVISION": flow_image.revision},
        tag=flow_image.image.rpartition(":")[2],
    )
    print(
        f"\nflow image: first build of the session {flow_image.build_seconds:.1f} s, "
        f"rebuild {rebuilt.seconds:.1f} s"
    )
    assert rebuilt.image_id == flow_image.image_id
    steps = re.findall(
        r"^#\d+ \[(?:builder|runtime) +\d+/\d+\] (?!FROM ).*$", rebuilt.output, re.MULTILINE
    )
    assert steps
    not_cached = [
        line
        for line in steps
        if not re.search(
            rf"^{re.escape(line.split(' ', 1)[0])} CACHED$", rebuilt.output, re.MULTILINE
        )
    ]
    assert not_cached == []
