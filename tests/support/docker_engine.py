"""The Docker engine and image builds for the container tests.

``ensure_engine`` runs ``docker/engine.sh`` (it starts an engine where none answers and
makes the base image) and returns the client it names; when no engine can be had at all,
the test skips saying why (a failure under ``GPUFLOW_REQUIRE_SERVICES=1``).

``build_test_image`` builds one of ``docker/*.Dockerfile`` with gpuflow's BuildKit build,
under a tag of its own per call (concurrent sessions never see each other's image), with
the machine's CA bundle as the build secret where package indexes sit behind a proxy.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from devtools.debian import debian_binary
from gpuflow.ops.deploy_steps import git_commit
from gpuflow.ops.images import BuiltImage, build_image
from tests.support.services import service_missing

REPO = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = REPO / "docker" / "engine.sh"
# The bundle that trusts the machine's TLS-intercepting proxy, where there is one.
# GPUFLOW_BUILD_CA_BUNDLE names another; an empty value passes none.
CA_BUNDLE_ENV = "GPUFLOW_BUILD_CA_BUNDLE"
_SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_ENGINE_TIMEOUT_S = 900


def base_image() -> str:
    return os.environ.get("GPUFLOW_BASE_IMAGE", "debian:bookworm-slim")


@functools.cache
def _engine_or_reason() -> tuple[str, str]:
    """(client, "") when an engine answers, else ("", why not)."""
    bash = shutil.which("bash")
    if bash is None:
        return "", "no bash to run docker/engine.sh with"
    try:
        completed = subprocess.run(
            [bash, str(ENGINE_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=_ENGINE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "", f"docker/engine.sh did not finish within {_ENGINE_TIMEOUT_S} s"
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines or not lines[-1].startswith("DOCKER="):
        tail = "\n".join(completed.stderr.strip().splitlines()[-10:])
        return "", (
            f"no Docker engine could be started (docker/engine.sh exit "
            f"{completed.returncode}):\n{tail}"
        )
    return lines[-1].removeprefix("DOCKER="), ""


def ensure_engine() -> str:
    """The Docker client of a running engine, or skip (fail where services are required)."""
    docker_cli, reason = _engine_or_reason()
    if not docker_cli:
        service_missing(reason)
    return docker_cli


def ca_bundle() -> Path | None:
    configured = os.environ.get(CA_BUNDLE_ENV)
    if configured is not None:
        return Path(configured) if configured.strip() else None
    return _SYSTEM_CA_BUNDLE if _SYSTEM_CA_BUNDLE.is_file() else None


def git_revision() -> str:
    """The checkout's commit, for the image's revision label ("unknown" outside git)."""
    return git_commit(REPO) or "unknown"


def build_test_image(
    docker_cli: str,
    dockerfile: str,
    name: str,
    *,
    build_args: Mapping[str, str] | None = None,
    secret: Path | None = None,
    target: str | None = None,
    tag: str | None = None,
) -> BuiltImage:
    """Build ``docker/<dockerfile>`` from the repository as ``<name>:<tag>`` (by default
    ``test-<random>``), ``BASE_IMAGE`` the one engine.sh made.

    ``secret`` replaces the CA bundle passed as the build secret (the test that checks
    the secret stays out of the layers passes a marked copy of it)."""
    return build_image(
        context=REPO,
        dockerfile=REPO / "docker" / dockerfile,
        image=f"{name}:{tag or 'test-' + uuid.uuid4().hex[:12]}",
        build_args={"BASE_IMAGE": base_image(), **(build_args or {})},
        ca_bundle=secret if secret is not None else ca_bundle(),
        target=target,
        docker=docker_cli,
    )


def docker(docker_cli: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the Docker client; the caller checks the exit status."""
    return subprocess.run(
        [docker_cli, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def remove_tag(docker_cli: str, image: str) -> None:
    """Untag a test image; its layers stay in the build cache for the next session."""
    docker(docker_cli, "image", "rm", image, timeout=120)


# Debian's docker-registry is the Distribution project's registry (2.8.2 in bookworm),
# what `registry:2` runs: a real registry without a registry to pull it from.
_REGISTRY_BINARY = Path("/usr/bin/docker-registry")


def registry_binary() -> Path:
    """Debian's docker-registry, installed where it is missing and we are root on Debian;
    else skip (fail where services are required)."""
    if debian_binary("docker-registry", str(_REGISTRY_BINARY)) is None:
        service_missing(f"no {_REGISTRY_BINARY} (Debian's docker-registry package) to push to")
    return _REGISTRY_BINARY


def registry_config(root: Path, port: int) -> str:
    """A registry on 127.0.0.1 without auth (Docker trusts 127.0.0.0/8 over plain HTTP)."""
    return (
        "version: 0.1\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
