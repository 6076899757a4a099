"""The GPU cap in one place: everything a GPU job holds while it runs.

``gpu_hold`` takes, in order, and gives back on any exit (success, failure, crash by
lease expiry, cancellation):

1. the capacity check: a request for more GPUs than a limit holds fails at once;
2. fair admission (optional): a place in the queue by priority, then arrival;
3. the Prefect slots of every limit, under one renewed lease;
4. the job's record in the registry of running jobs (for reconciliation).

With admission, a holder whose job ended hands its lease to the request its leave
admits, when that one wants the same slots of the same limits: the receiver holds the
lease as it is, so neither the release nor the take is a request to the Prefect server
between one job's end and the next one's start, and the slots never leave the limit. The
holder's record leaves the registry before the hand-over, the receiver's enters after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

from prefect.client.schemas.objects import ConcurrencyLeaseHolder

from gpuflow.core.events import GpuflowEvent, emit_run_event
from gpuflow.core.request import Priority
from gpuflow.gpu.admission.base import AdmissionQueue, HandedLease
from gpuflow.gpu.admission.policy import Ticket
from gpuflow.gpu.admission.waiting import admitted
from gpuflow.gpu.capacity import check_gpu_capacity
from gpuflow.gpu.leases import GpuLease, held_gpu_slots, release_in_background
from gpuflow.gpu.registry import JobRegistry, RunningJob


@dataclass(frozen=True)
class Admission:
    """Where and how a request waits for its turn."""

    queue: AdmissionQueue
    priority: Priority
    ttl_s: float


@dataclass(frozen=True)
class GpuHold:
    lease: GpuLease
    waited_s: float  # in the admission queue


@contextlib.asynccontextmanager
async def gpu_hold(
    limits: list[str],
    slots: int,
    *,
    job_name: str,
    run_id: str | None,
    lease_s: float,
    registry: JobRegistry,
    admission: Admission | None = None,
    holder: ConcurrencyLeaseHolder | None = None,
) -> AsyncIterator[GpuHold]:
    """Hold ``slots`` of each of ``limits`` for the body; see the module's steps."""
    capacity = await check_gpu_capacity(limits, slots)
    async with contextlib.AsyncExitStack() as held:
        waited = 0.0
        handed: HandedLease | None = None
        pass_on = None
        if admission is not None:
            queue = admission.queue
            ticket = Ticket(tuple(limits), slots, admission.priority, holder=run_id or job_name)
            waited = await held.enter_async_context(
                admitted(queue, ticket, capacity, ttl_s=admission.ttl_s)
            )
            handed = await _claimed_lease(queue, ticket.ticket_id)
            if _can_hand_over(limits):

                async def pass_on(lease: HandedLease) -> bool:
                    return await queue.hand_over(ticket.ticket_id, lease) is not None

        # Admitted: the slots are ours, handed over or taken at once (holders leave the
        # queue only after giving their slots back, so a refusal now is brief).
        lease = await held.enter_async_context(
            held_gpu_slots(
                limits,
                slots,
                lease_s,
                holder,
                expect_free=admission is not None,
                handed=handed,
                pass_on=pass_on,
            )
        )
        if run_id is not None:
            emit_run_event(GpuflowEvent.GPU_ADMITTED, run_id, job=job_name)
        record = RunningJob.here(str(lease.lease_id), limits, slots, job_name, run_id, lease_s)
        held.enter_context(registry.recorded(record))
        await held.enter_async_context(_refreshed(registry, record.lease_id, lease_s / 3))
        yield GpuHold(lease, waited)


def _can_hand_over(limits: list[str]) -> bool:
    """A lease keeps the holder it was taken for. The server releases a task run's leases on
    limits named ``tag:<its tag>`` when that run ends (core_policy's
    ReleaseTaskConcurrencySlots), which would take a handed lease from its receiver."""
    return not any(name.startswith("tag:") for name in limits)


async def _claimed_lease(queue: AdmissionQueue, ticket_id: str) -> HandedLease | None:
    """The lease handed to our admitted ticket; given back if we are cancelled meanwhile."""
    read = asyncio.ensure_future(queue.handed_lease(ticket_id))
    try:
        return await asyncio.shield(read)
    except asyncio.CancelledError:
        read.add_done_callback(_release_unclaimed)
        raise


def _release_unclaimed(read: asyncio.Future[HandedLease | None]) -> None:
    if read.cancelled() or read.exception() is not None:
        return
    handed = read.result()
    if handed is not None:
        release_in_background(UUID(handed.lease_id))


@contextlib.asynccontextmanager
async def _refreshed(registry: JobRegistry, lease_id: str, every_s: float) -> AsyncIterator[None]:
    """Refresh the job's record while the body runs: reconciliation on another host tells
    a live holder from a dead one by it, whatever the flow run's state still says."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            await asyncio.to_thread(registry.refresh, lease_id)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
