"""Building gpuflow's images with BuildKit: the argv as data, the result named.

Docker's BuildKit builder is what the Dockerfiles need (cache and secret mounts); the
legacy builder that docker-py drives cannot do either. The build runs the Docker client
(``GPUFLOW_DOCKER``, else Debian's ``/usr/bin/docker``, else ``docker`` on PATH) with
``DOCKER_BUILDKIT=1``. An extra CA bundle for package indexes behind a TLS-intercepting
proxy goes in as the build secret ``ca``: mounted only while a ``RUN`` needs it, never in
a layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gpuflow.core.errors import GpuflowError

DOCKER_ENV = "GPUFLOW_DOCKER"
# Debian's client speaks BuildKit without the buildx plugin that newer CLIs insist on.
_DEBIAN_DOCKER = Path("/usr/bin/docker")
# The id the Dockerfiles mount the CA bundle under (`RUN --mount=type=secret,id=ca`).
CA_SECRET_ID = "ca"  # noqa: S105 (a name, not a secret)
_OUTPUT_TAIL_LINES = 40


class ImageBuildError(GpuflowError):
    """The Docker client is missing, or the build failed (the output's tail says why)."""


@dataclass(frozen=True)
class BuiltImage:
    image: str  # name:tag
    image_id: str  # sha256:...
    seconds: float
    output: str

    @property
    def image_name(self) -> str:
        return self.image.rpartition(":")[0]

    @property
    def tag(self) -> str:
        return self.image.rpartition(":")[2]


def docker_client() -> str:
    """The Docker client to run, or a clear error naming where it was looked for."""
    configured = os.environ.get(DOCKER_ENV, "").strip()
    if configured:
        if shutil.which(configured) is None:
            raise ImageBuildError(f"{DOCKER_ENV}={configured!r} is not an executable")
        return configured
    if _DEBIAN_DOCKER.is_file():
        return str(_DEBIAN_DOCKER)
    found = shutil.which("docker")
    if found is None:
        raise ImageBuildError(
            f"no Docker client: neither {_DEBIAN_DOCKER} nor `docker` on PATH "
            f"(set {DOCKER_ENV} to one)"
        )
    return found


def image_reference(image_name: str, tag: str) -> str:
    """``name:tag``, refusing what Docker would refuse later with a vaguer message."""
    if not image_name or image_name != image_name.strip() or any(c.isspace() for c in image_name):
        raise ImageBuildError(f"invalid image name {image_name!r}")
    if image_name != image_name.lower():
        raise ImageBuildError(f"invalid image name {image_name!r}: Docker wants lower case")
    last = image_name.rsplit("/", 1)[-1]
    if ":" in last or "@" in last:
        raise ImageBuildError(f"image name {image_name!r} already has a tag or digest")
    if not tag or len(tag) > 128 or not all(c.isalnum() or c in "_.-" for c in tag):
        raise ImageBuildError(f"invalid image tag {tag!r}: letters, digits, _ . - only")
    if tag[0] in ".-":
        raise ImageBuildError(f"invalid image tag {tag!r}: it cannot start with . or -")
    return f"{image_name}:{tag}"


def build_command(
    docker: str,
    *,
    context: Path,
    dockerfile: Path,
    image: str,
    iidfile: Path,
    build_args: Mapping[str, str] | None = None,
    ca_bundle: Path | None = None,
    target: str | None = None,
    network: str | None = "host",
) -> list[str]:
    command = [docker, "build", "--file", str(dockerfile), "--tag", image]
    command += ["--iidfile", str(iidfile), "--progress", "plain"]
    if network:
        command += ["--network", network]
    if target:
        command += ["--target", target]
    for name, value in sorted((build_args or {}).items()):
        command += ["--build-arg", f"{name}={value}"]
    if ca_bundle is not None:
        command += ["--secret", f"id={CA_SECRET_ID},src={ca_bundle}"]
    command.append(str(context))
    return command


def build_image(
    *,
    context: Path,
    dockerfile: Path,
    image: str,
    build_args: Mapping[str, str] | None = None,
    ca_bundle: Path | None = None,
    target: str | None = None,
    network: str | None = "host",
    docker: str | None = None,
    timeout_s: float = 1800,
) -> BuiltImage:
    """Build ``dockerfile`` in ``context`` with BuildKit and tag it ``image``."""
    if not context.is_dir():
        raise ImageBuildError(f"build context {context} is not a directory")
    if not dockerfile.is_file():
        raise ImageBuildError(f"Dockerfile {dockerfile} does not exist")
    if ca_bundle is not None and not ca_bundle.is_file():
        raise ImageBuildError(f"CA bundle {ca_bundle} does not exist")
    docker = docker or docker_client()
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    with tempfile.TemporaryDirectory(prefix="gpuflow-build-") as scratch:
        iidfile = Path(scratch) / "iid"
        command = build_command(
            docker,
            context=context,
            dockerfile=dockerfile,
            image=image,
            iidfile=iidfile,
            build_args=build_args,
            ca_bundle=ca_bundle,
            target=target,
            network=network,
        )
        started = time.monotonic()
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ImageBuildError(f"building {image} took over {timeout_s:.0f} s") from exc
        seconds = time.monotonic() - started
        output = completed.stdout + completed.stderr
        if completed.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-_OUTPUT_TAIL_LINES:])
            raise ImageBuildError(
                f"building {image} from {dockerfile} failed (exit {completed.returncode}):\n{tail}"
            )
        image_id = iidfile.read_text().strip()
    return BuiltImage(image=image, image_id=image_id, seconds=seconds, output=output)
