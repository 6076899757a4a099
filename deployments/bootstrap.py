"""Bootstrap of a Prefect server for gpuflow: GPU limits and the stack block.

Idempotent: running it again updates limits to the given sizes and overwrites the
stack block, so it is safe in a deploy pipeline.
"""

from __future__ import annotations

from blocks.stack import GpuflowStack
from gpuflow.capacity import ensure_gpu_limits


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
