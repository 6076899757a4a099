"""gpuflow's work pools: one per kind of infrastructure, with a queue per priority.

A pool's base job template is built by code: the worker type's own default (Prefect's
process worker) or gpuflow's additions to it (the NAS, the service account, the roles;
``gpuflow.compute.kubernetes.pool``, ``gpuflow.compute.ecs.pool``,
``gpuflow.compute.docker_pool``). Creating a pool again
updates its template and queues: safe to repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

# Queue name -> priority (1 is served first). Request priorities name their queue;
# `maintenance` runs the janitor and prebuilds, never ahead of users' work.
PRIORITY_QUEUES = {"high": 1, "normal": 2, "batch": 3, "maintenance": 4}


def _process_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def _kubernetes_template() -> dict[str, Any]:
    from gpuflow.compute.kubernetes.pool import kubernetes_base_job_template

    return kubernetes_base_job_template()


def _docker_template() -> dict[str, Any]:
    from gpuflow.compute.docker_pool import docker_base_job_template

    return docker_base_job_template()


def _ecs_template() -> dict[str, Any]:
    from gpuflow.compute.ecs.pool import ecs_base_job_template

    return ecs_base_job_template()


# Pool type -> its base job template (imported when asked for: each pulls in its worker).
TEMPLATES: dict[str, Callable[[], dict[str, Any]]] = {
    "process": _process_template,
    "kubernetes": _kubernetes_template,
    "ecs": _ecs_template,
    "docker": _docker_template,
}
POOL_TYPES = tuple(TEMPLATES)


def pool_name(pool_type: str, prefix: str = "gpuflow") -> str:
    return f"{prefix}-{pool_type}"


def base_job_template(pool_type: str) -> dict[str, Any]:
    """gpuflow's base job template for a pool of ``pool_type``."""
    try:
        template = TEMPLATES[pool_type]
    except KeyError:
        raise ValueError(
            f"unknown work pool type {pool_type!r}; gpuflow knows {', '.join(POOL_TYPES)}"
        ) from None
    return template()


async def ensure_work_pool(client: PrefectClient, name: str, pool_type: str) -> bool:
    """Create or update the pool and its priority queues; True when the pool is new."""
    try:
        await client.read_work_pool(name)
        existed = True
    except ObjectNotFound:
        existed = False
    await client.create_work_pool(
        WorkPoolCreate(
            name=name,
            type=pool_type,
            base_job_template=base_job_template(pool_type),
            description=f"gpuflow runs on {pool_type} infrastructure",
        ),
        overwrite=True,
    )
    for queue, priority in PRIORITY_QUEUES.items():
        try:
            existing = await client.read_work_queue_by_name(queue, work_pool_name=name)
        except ObjectNotFound:
            await client.create_work_queue(queue, priority=priority, work_pool_name=name)
            continue
        if existing.priority != priority:
            await client.update_work_queue(existing.id, priority=priority)
    return not existed
