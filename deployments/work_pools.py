"""gpuflow's work pools: one per kind of infrastructure, with a queue per priority.

A pool's base job template is ``deployments/base_job_templates/<type>.json`` where gpuflow
ships one, else the worker type's own default (prefect's process worker, prefect-kubernetes,
prefect-aws). Creating a pool again updates its template and queues: safe to repeat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

TEMPLATES_DIR = Path(__file__).resolve().parent / "base_job_templates"
POOL_TYPES = ("process", "kubernetes", "ecs")
# Queue name -> priority (1 is served first). Request priorities name their queue;
# `maintenance` runs the janitor and prebuilds, never ahead of users' work.
PRIORITY_QUEUES = {"high": 1, "normal": 2, "batch": 3, "maintenance": 4}


def pool_name(pool_type: str, prefix: str = "gpuflow") -> str:
    return f"{prefix}-{pool_type}"


def default_base_job_template(pool_type: str) -> dict[str, Any]:
    """The worker type's own default template."""
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    if pool_type == "kubernetes":
        from prefect_kubernetes.worker import KubernetesWorker

        return dict(KubernetesWorker.get_default_base_job_template())
    if pool_type == "ecs":
        from prefect_aws.workers.ecs_worker import ECSWorker

        return dict(ECSWorker.get_default_base_job_template())
    raise ValueError(f"unknown work pool type {pool_type!r}; gpuflow knows {', '.join(POOL_TYPES)}")


def base_job_template(pool_type: str, templates_dir: Path = TEMPLATES_DIR) -> dict[str, Any]:
    """gpuflow's template for ``pool_type`` where it ships one, else the worker's default."""
    shipped = templates_dir / f"{pool_type}.json"
    if shipped.is_file():
        try:
            template: dict[str, Any] = json.loads(shipped.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{shipped} is not valid JSON: {exc}") from None
        return template
    return default_base_job_template(pool_type)


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
