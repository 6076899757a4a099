"""GPU capacity: the global concurrency limits that cap GPU work, the check that a request
can ever be admitted (refused before anything is downloaded otherwise), and their use."""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from gpuflow.core.errors import GpuCapacityError

# The API returns at most this many limits per request.
_API_PAGE = 200


def gpu_limit_names(gpu_limit: str, gpu_type: str | None) -> list[str]:
    """The limits a job takes slots of: the pool, and its GPU type's pool if it names one."""
    return [gpu_limit] + ([f"{gpu_limit}:{gpu_type}"] if gpu_type else [])


async def ensure_gpu_limits(limits: dict[str, int]) -> None:
    """Create or update the global concurrency limits (prefect.yaml cannot declare them)."""
    async with get_client() as client:
        for name, slots in limits.items():
            if slots < 1:
                raise ValueError(f"GPU limit {name!r} must have at least 1 slot, not {slots}")
            await client.upsert_global_concurrency_limit_by_name(name, slots)


async def check_gpu_capacity(names: list[str], gpus: int) -> dict[str, int]:
    """The size of each limit; ``GpuCapacityError`` when one is missing, inactive or smaller
    than ``gpus`` (the first such of ``names``)."""
    async with get_client() as client:
        # Read side by side: each read is a round trip on the way from flow start to job.
        limits = await asyncio.gather(
            *(client.read_global_concurrency_limit_by_name(name) for name in names),
            return_exceptions=True,
        )
    capacity: dict[str, int] = {}
    for name, limit in zip(names, limits, strict=True):
        if isinstance(limit, ObjectNotFound):
            raise GpuCapacityError(
                f"no GPU limit named {name!r}: create it with `gpuflow bootstrap` "
                "(or `prefect gcl create`)"
            )
        if isinstance(limit, BaseException):
            raise limit
        if not limit.active:
            raise GpuCapacityError(f"GPU limit {name!r} is inactive: no GPU job can start")
        if gpus > limit.limit:
            raise GpuCapacityError(
                f"request needs gpus={gpus} but the limit {name!r} has only {limit.limit} GPU slots"
            )
        capacity[name] = limit.limit
    return capacity


class GpuSlotUsage(BaseModel):
    name: str
    active_slots: int
    limit: int


async def gpu_slot_usage(gpu_limit: str) -> list[GpuSlotUsage]:
    """Slots in use of the GPU limit ``gpu_limit`` and of its per-type limits (``gpu:<type>``)."""
    usage: list[GpuSlotUsage] = []
    offset = 0
    async with get_client() as client:
        while True:
            page = await client.read_global_concurrency_limits(limit=_API_PAGE, offset=offset)
            usage.extend(
                GpuSlotUsage(name=item.name, active_slots=item.active_slots, limit=item.limit)
                for item in page
                if item.name == gpu_limit or item.name.startswith(f"{gpu_limit}:")
            )
            if len(page) < _API_PAGE:
                return sorted(usage, key=lambda item: item.name)
            offset += _API_PAGE
