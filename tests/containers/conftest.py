"""Session fixtures of the container tests: a Docker engine and the flow image.

The flow image is built once per test session (a warm machine's layer cache makes that
a few seconds), under a tag of its own, untagged at the end.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import certifi
import pytest

from tests.support.docker_engine import (
    REPO,
    build_test_image,
    ca_bundle,
    docker,
    ensure_engine,
    git_revision,
    remove_tag,
)

FLOW_IMAGE_NAME = "gpuflow"
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class FlowImage:
    image: str  # name:tag
    image_id: str
    version: str
    revision: str
    build_seconds: float
    build_output: str
    # Text only the build secret holds: no layer may contain it.
    secret_marker: str
    # The base64 bodies of the certificates in the build secret.
    secret_certificates: frozenset[str]


@dataclass(frozen=True)
class RunningContainer:
    docker_cli: str
    name: str

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """``command`` in the container, as the image's user, in its working directory."""
        return docker(self.docker_cli, "exec", self.name, *command)


def certificate_bodies(bundle: str) -> frozenset[str]:
    return frozenset("".join(body.split()) for body in _PEM.findall(bundle))


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


def marked_secret(directory: Path) -> tuple[Path, str]:
    """The CA bundle the build needs, plus a comment line no file of the repository holds
    (PEM readers skip text between certificates), to look for in the image."""
    marker = f"gpuflow-build-secret-{uuid.uuid4().hex}"
    bundle = ca_bundle() or Path(certifi.where())
    secret = directory / "ca.pem"
    secret.write_text(f"{bundle.read_text()}\n# {marker}\n")
    return secret, marker


@pytest.fixture(scope="session")
def docker_cli() -> str:
    """The Docker client of a running engine (docker/engine.sh starts one if needed)."""
    return ensure_engine()


@pytest.fixture(scope="session")
def flow_image(docker_cli: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowImage]:
    secret, marker = marked_secret(tmp_path_factory.mktemp("flow-image-secret"))
    version, revision = project_version(), git_revision()
    built = build_test_image(
        docker_cli,
        "flow.Dockerfile",
        FLOW_IMAGE_NAME,
        build_args={"VERSION": version, "REVISION": revision},
        secret=secret,
    )
    print(f"\nflow image {built.image} built in {built.seconds:.1f} s")
    yield FlowImage(
        image=built.image,
        image_id=built.image_id,
        version=version,
        revision=revision,
        build_seconds=built.seconds,
        build_output=built.output,
        secret_marker=marker,
        secret_certificates=certificate_bodies(secret.read_text()),
    )
    remove_tag(docker_cli, built.image)


@pytest.fixture(scope="session")
def flow_container(docker_cli: str, flow_image: FlowImage) -> Iterator[RunningContainer]:
    """One running container of the flow image for the tests that only look inside it:
    on the vfs storage driver every container start copies the whole image (~860 MB),
    which made a `docker run` per check the slowest part of the suite."""
    name = f"gpuflow-test-{uuid.uuid4().hex[:12]}"
    started = docker(
        docker_cli, "run", "--detach", "--rm", "--name", name, "--network", "host",
        "--entrypoint", "sleep", flow_image.image, "infinity",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    yield RunningContainer(docker_cli, name)
    docker(docker_cli, "rm", "--force", name, timeout=120)
