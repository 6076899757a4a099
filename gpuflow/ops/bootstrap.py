"""Bootstrap of a Prefect server for gpuflow: work pools, GPU limits, blocks, the stack.

Idempotent: running it again updates pools' templates and queues, sets limits to the given
sizes and overwrites the stack block, so it is safe in a deploy pipeline
(``gpuflow bootstrap`` runs it).
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect.client.orchestration import get_client
from pydantic import BaseModel

from gpuflow.gpu.capacity import ensure_gpu_limits
from gpuflow.ops.pool_variables import PoolVariablesReport, ensure_pool_variables
from gpuflow.ops.work_pools import POOL_TYPES, ensure_work_pool, pool_name
from gpuflow.pipeline.stack import GpuflowStack


async def bootstrap(
    stack: GpuflowStack, stack_name: str, gpu_slots: int, per_type: dict[str, int] | None = None
) -> None:
    """Create or update the GPU limits and save ``stack`` under ``stack_name``."""
    limits = {stack.gpu_limit: gpu_slots}
    limits.update(
        {f"{stack.gpu_limit}:{gpu_type}": slots for gpu_type, slots in (per_type or {}).items()}
    )
    await ensure_gpu_limits(limits)
    await stack.asave(stack_name, overwrite=True)


class BootstrapReport(BaseModel):
    pools_created: list[str]
    pools_updated: list[str]
    pool_variables: PoolVariablesReport
    limits: dict[str, int]
    block_types: list[str]
    stack: str


async def register_block_types() -> list[str]:
    """Register gpuflow's block types (idempotent), so the UI can create and edit them."""
    from gpuflow.ops.collection import BLOCK_TYPES

    for block_type in BLOCK_TYPES:
        await block_type.aregister_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


async def bootstrap_server(
    stack: GpuflowStack,
    stack_name: str,
    gpu_slots: int,
    per_type: dict[str, int] | None = None,
    pool_types: Sequence[str] = POOL_TYPES,
    pool_prefix: str = "gpuflow",
) -> BootstrapReport:
    """Everything a fresh server needs before ``prefect deploy``: pools with gpuflow's job
    templates and priority queues, the Prefect variables those templates read, GPU limits,
    block types and the saved stack."""
    created: list[str] = []
    updated: list[str] = []
    async with get_client() as client:
        for pool_type in pool_types:
            name = pool_name(pool_type, pool_prefix)
            (created if await ensure_work_pool(client, name, pool_type) else updated).append(name)
        variables = await ensure_pool_variables(client, stack, pool_types)
    block_types = await register_block_types()
    await bootstrap(stack, stack_name, gpu_slots, per_type)
    limits = {stack.gpu_limit: gpu_slots}
    limits.update({f"{stack.gpu_limit}:{t}": n for t, n in (per_type or {}).items()})
    return BootstrapReport(
        pools_created=created,
        pools_updated=updated,
        pool_variables=variables,
        limits=limits,
        block_types=block_types,
        stack=stack_name,
    )
