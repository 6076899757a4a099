"""The ``docker`` work pool's base job template: prefect-docker's default plus the NAS,
the host's GPUs and the host network.

On a single GPU host a ``docker`` pool runs each flow run as a container of gpuflow's
flow image. The flow's GPU job runs inside that container as a local subprocess, as on a
``process`` pool: the GPU cap and the per-job ``CUDA_VISIBLE_DEVICES`` sets are the same
code, over the GPUs the container is given. So the template adds to the Docker worker's
default:

- the NAS bind-mounted at the same path as on the host (venvs are not relocatable), its
  path defaulting to the Prefect variable ``gpuflow_nas_mount_path``;
- the host's GPUs as a Docker device request (``--gpus all``; the NVIDIA container
  toolkit must be installed), ``[]`` on a host without GPUs;
- the host network by default (the flow reaches the Prefect API and the stores as the
  host does), and the user the container runs as (the NAS owner's ``UID:GID``; empty
  means the image's user).

Those go to docker-py through ``container_create_kwargs`` (``mounts``, ``device_requests``,
``user``), which the template fills, so it is not a variable of its own here.
``gpuflow bootstrap`` installs the template from this code; the copy in the repository's
``deployments/`` is rendered by ``gpuflow.ops.pool_templates``.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect_docker.worker import DockerWorker

from gpuflow.compute.pool_variables import default_to_variables

DEFAULT_NAS_MOUNT_PATH = "/mnt/nas"  # the same path as the Kubernetes and ECS templates
# All of the host's GPUs, as `docker run --gpus all` asks for them (docker-py's
# DeviceRequest fields).
ALL_GPUS: list[dict[str, Any]] = [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]

PREFECT_VARIABLES: dict[str, str] = {"nas_mount_path": "gpuflow_nas_mount_path"}
PREFECT_VARIABLE_DEFAULTS: dict[str, str] = {"gpuflow_nas_mount_path": DEFAULT_NAS_MOUNT_PATH}

_VARIABLES: dict[str, dict[str, Any]] = {
    "nas_mount_path": {
        "title": "NAS mount path",
        "description": "The NAS on the host, bind-mounted at the same path in the container.",
        "type": "string",
    },
    "gpu_device_requests": {
        "title": "GPU device requests",
        "description": "GPUs given to the flow container, as Docker device requests (the "
        "default is all of the host's, like `--gpus all`); [] on a host without GPUs.",
        "type": "array",
        "items": {"type": "object"},
        "default": ALL_GPUS,
    },
    "container_user": {
        "title": "Container user",
        "description": "UID:GID the flow container runs as, the owner of the NAS files; "
        "empty for the image's user.",
        "type": "string",
        "default": "",
        "pattern": r"^([0-9]+(:[0-9]+)?|[a-z_][a-z0-9_-]*)?$",
    },
}


def _placeholder(variable: str) -> str:
    return "{{ " + variable + " }}"


def docker_base_job_template() -> dict[str, Any]:
    """prefect-docker's default template with the NAS, the GPUs and the host network."""
    template: dict[str, Any] = copy.deepcopy(DockerWorker.get_default_base_job_template())
    properties = template["variables"]["properties"]
    del properties["container_create_kwargs"]
    properties.update(copy.deepcopy(_VARIABLES))
    default_to_variables(properties, PREFECT_VARIABLES)
    properties["network_mode"]["default"] = "host"
    properties["image_pull_policy"]["default"] = "IfNotPresent"
    # A finished run's container holds nothing the run's logs and artifacts do not.
    properties["auto_remove"]["default"] = True

    nas = _placeholder("nas_mount_path")
    template["job_configuration"]["container_create_kwargs"] = {
        "mounts": [{"Type": "bind", "Source": nas, "Target": nas, "ReadOnly": False}],
        "device_requests": _placeholder("gpu_device_requests"),
        "user": _placeholder("container_user"),
    }
    return template
