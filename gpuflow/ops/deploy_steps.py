"""prefect.yaml steps that build and push the flow image (``build:`` and ``push:``).

prefect-docker's ``build_docker_image`` drives docker-py's legacy builder, which refuses
the flow Dockerfile's ``RUN --mount`` (the uv cache, the CA secret), and its ``buildx``
backend needs the buildx plugin; ``build_flow_image`` builds with BuildKit instead and
returns the same outputs (``image_name``, ``tag``, ``image``, ``image_id``,
``additional_tags``), so later steps and job variables read ``{{ build-image.image }}``.

The image's name comes from one place, the environment of ``prefect deploy``:

- ``GPUFLOW_IMAGE_REGISTRY``: the registry repository the image goes to (the
  ``ecr_repository_url`` Terraform outputs, ``ghcr.io/acme/gpuflow``,
  ``127.0.0.1:5000/gpuflow``). The image is then ``<that>:<tag>`` and
  ``push_flow_image`` pushes it. Unset, the image is ``<repository>:<tag>`` (the step's
  argument, ``gpuflow``) on the building host (a ``docker`` pool there runs it), and
  nothing is pushed.
- ``GPUFLOW_IMAGE_TAG``: the tag; default ``<version>-<git commit>`` (a rebuilt image
  never reuses a tag that hosts may hold an older image under).
- ``GPUFLOW_IMAGE``: an image already built (by CI, say) to deploy as it is: no build,
  no push. A deploy that needs no Docker (the ``process`` pool's) sets nothing at all.
- ``GPUFLOW_BUILD_CA_BUNDLE``: a CA bundle for package indexes behind a TLS-intercepting
  proxy, passed as a build secret; ``GPUFLOW_BASE_IMAGE``: the base image build argument.

Both steps remember their result within one ``prefect deploy --all`` (every container
deployment names the same build), so the image is built and pushed once.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from gpuflow.ops.images import ImageBuildError, build_image, image_reference

REGISTRY_ENV = "GPUFLOW_IMAGE_REGISTRY"
TAG_ENV = "GPUFLOW_IMAGE_TAG"
PREBUILT_ENV = "GPUFLOW_IMAGE"
CA_BUNDLE_ENV = "GPUFLOW_BUILD_CA_BUNDLE"
BASE_IMAGE_ENV = "GPUFLOW_BASE_IMAGE"


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def git_commit(context: Path) -> str:
    """The commit checked out at ``context`` ("" outside git or without git)."""
    git = shutil.which("git")
    if git is None:
        return ""
    completed = subprocess.run(
        [git, "rev-parse", "HEAD"], cwd=context, capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() if completed.returncode == 0 else ""


def image_name_for(repository: str) -> str:
    registry = _env(REGISTRY_ENV).rstrip("/")
    if "://" in registry:
        raise ImageBuildError(
            f"{REGISTRY_ENV}={registry!r}: give the repository as host/path, without a scheme"
        )
    return registry or repository


def _outputs(image: str, image_id: str) -> dict[str, Any]:
    name, _, tag = image.rpartition(":")
    return {
        "image_name": name,
        "tag": tag,
        "image": image,
        "image_id": image_id,
        "additional_tags": [],
    }


def _split_prebuilt(image: str) -> tuple[str, str]:
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        raise ImageBuildError(f"{PREBUILT_ENV}={image!r}: name the image with its tag (name:tag)")
    return name, tag


@functools.cache
def _build(
    repository: str, dockerfile: str, context: str, registry: str, tag: str, ca: str, base: str
) -> dict[str, Any]:
    del registry  # part of the cache key: image_name_for reads it
    root = Path(context).resolve()
    commit = git_commit(root)
    project_version = version("gpuflow")
    chosen_tag = tag or (f"{project_version}-{commit[:12]}" if commit else project_version)
    image = image_reference(image_name_for(repository), chosen_tag)
    build_args = {"VERSION": project_version, "REVISION": commit or "unknown"}
    if base:
        build_args["BASE_IMAGE"] = base
    built = build_image(
        context=root,
        dockerfile=root / dockerfile,
        image=image,
        build_args=build_args,
        ca_bundle=Path(ca) if ca else None,
    )
    print(f"built {image} ({built.image_id}) in {built.seconds:.1f} s", flush=True)
    return _outputs(image, built.image_id)


def build_flow_image(
    repository: str = "gpuflow",
    dockerfile: str = "docker/flow.Dockerfile",
    context: str = ".",
) -> dict[str, Any]:
    """Build the flow image with BuildKit (see the module's docstring for its name)."""
    prebuilt = _env(PREBUILT_ENV)
    if prebuilt:
        name, tag = _split_prebuilt(prebuilt)
        return _outputs(image_reference(name, tag), "")
    return dict(
        _build(
            repository,
            dockerfile,
            context,
            _env(REGISTRY_ENV),
            _env(TAG_ENV),
            _env(CA_BUNDLE_ENV),
            _env(BASE_IMAGE_ENV),
        )
    )


def push_flow_image(
    image_name: str, tag: str, credentials: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Push the built image when a registry is set (prefect-docker's push step does it);
    without one, or for an image given by ``GPUFLOW_IMAGE``, there is nothing to push."""
    outputs = {"image_name": image_name, "tag": tag, "image": f"{image_name}:{tag}"}
    if _env(PREBUILT_ENV) or not _env(REGISTRY_ENV):
        print(f"no {REGISTRY_ENV}: {image_name}:{tag} stays on this host", flush=True)
        return outputs
    from prefect_docker.deployments.steps import push_docker_image

    push_docker_image(image_name=image_name, tag=tag, credentials=credentials)
    return outputs


if __name__ == "__main__":
    sys.stdout.write(build_flow_image()["image"] + "\n")
