"""Reconciliation of GPU slots: the limits' active slots against the jobs really running.

A job holding slots has a record in the job registry (lease id, slots, flow run, host
and pid of its flow process). A record whose flow process is gone, or whose flow run
has ended, or (on another host) that its holder stopped refreshing for longer than its
lease, belongs to a dead holder: its lease still counts until it expires. With
``repair=True`` those leases are released at once and their records removed.

Slots the limit counts that no live record explains (a holder outside gpuflow, or a
lease whose record was lost) are reported; they cannot be released without their
lease id and return by themselves when their leases expire.
"""

from __future__ import annotations

import logging
import socket
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from gpuflow.core.locks import process_alive
from gpuflow.gpu.registry import JobRegistry, RunningJob

logger = logging.getLogger(__name__)

_CLOCK_SKEW_S = 30.0  # between this host and the NAS that stamps the records


class LimitReport(BaseModel):
    name: str
    limit: int
    active_slots: int
    accounted_slots: int

    @property
    def unaccounted_slots(self) -> int:
        return self.active_slots - self.accounted_slots


class ReconcileReport(BaseModel):
    limits: list[LimitReport]
    live_jobs: list[RunningJob]
    dead_jobs: list[RunningJob]
    released_leases: list[str]
    unreadable_records: list[str]
    missing_limits: list[str]

    @property
    def consistent(self) -> bool:
        return (
            all(limit.unaccounted_slots == 0 for limit in self.limits)
            and all(job.lease_id in self.released_leases for job in self.dead_jobs)
            and not self.missing_limits
        )

    def summary(self) -> str:
        lines = [
            f"{limit.name}: {limit.active_slots}/{limit.limit} slots active, "
            f"{limit.accounted_slots} held by live jobs"
            + (f", {limit.unaccounted_slots} unaccounted" if limit.unaccounted_slots else "")
            for limit in self.limits
        ]
        lines += [f"limit {name!r} does not exist" for name in self.missing_limits]
        lines += [
            f"dead holder: job {job.job_name} (flow run {job.flow_run_id}, pid {job.pid} on "
            f"{job.host}) held {job.slots} slot(s) under lease {job.lease_id}"
            + (" — released" if job.lease_id in self.released_leases else "")
            for job in self.dead_jobs
        ]
        lines += [f"unreadable job record {path}" for path in self.unreadable_records]
        return "\n".join(lines)


async def _flow_run_ended(flow_run_id: str | None) -> bool:
    if flow_run_id is None:
        return False
    async with get_client() as client:
        try:
            run = await client.read_flow_run(UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return True
    return run.state is not None and run.state.is_final()


async def _job_alive(job: RunningJob, registry: JobRegistry) -> bool:
    if await _flow_run_ended(job.flow_run_id):
        return False
    if job.host == socket.gethostname():
        return process_alive(job.pid)
    # Another host's process: a flow run still says Running after a kill -9 until something
    # marks it Crashed, so its record's freshness decides. A live holder refreshes it every
    # third of its lease; one older than the lease (plus clock skew) has lost its lease too.
    seen = registry.seen_at(job)
    if job.lease_s is None or seen is None:
        return True  # a record from before records were refreshed: trust the run's state
    return time.time() - seen <= job.lease_s + _CLOCK_SKEW_S


async def _read_limits(names: list[str]) -> tuple[dict[str, tuple[int, int]], list[str]]:
    found: dict[str, tuple[int, int]] = {}
    missing: list[str] = []
    async with get_client() as client:
        for name in names:
            try:
                limit = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                missing.append(name)
                continue
            found[name] = (int(limit.limit), int(limit.active_slots))
    return found, missing


async def reconcile_gpu_slots(
    limit_names: list[str], repair: bool, registry: JobRegistry
) -> ReconcileReport:
    """Compare each limit's active slots with the live jobs of ``registry``; with
    ``repair``, release the leases of dead holders."""
    jobs, unreadable = registry.jobs()
    live: list[RunningJob] = []
    dead: list[RunningJob] = []
    for job in jobs:
        if not set(job.limits) & set(limit_names):
            continue
        (live if await _job_alive(job, registry) else dead).append(job)

    released: list[str] = []
    if repair and dead:
        async with get_client() as client:
            for job in list(dead):
                if registry.current(job.lease_id) != job:
                    # Since it was read, its holder gave the lease back or handed it to
                    # the next job (which records itself under the same lease id): the
                    # lease is no dead holder's any more.
                    dead.remove(job)
                    continue
                # A no-op for a lease that already expired; its record goes either way.
                await client.release_concurrency_slots_with_lease(UUID(job.lease_id))
                registry.remove(job.lease_id)
                released.append(job.lease_id)
                logger.warning(
                    "Released %d GPU slot(s) of %s held by dead job %s (flow run %s)",
                    job.slots,
                    job.limits,
                    job.job_name,
                    job.flow_run_id,
                )

    limits, missing = await _read_limits(limit_names)
    reports = [
        LimitReport(
            name=name,
            limit=size,
            active_slots=active,
            accounted_slots=sum(job.slots for job in live if name in job.limits),
        )
        for name, (size, active) in limits.items()
    ]
    return ReconcileReport(
        limits=reports,
        live_jobs=live,
        dead_jobs=dead,
        released_leases=released,
        unreadable_records=[str(path) for path in unreadable],
        missing_limits=missing,
    )
