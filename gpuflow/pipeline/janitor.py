"""The janitor flow: remove stale workspaces, keep the model cache within its budget, watch
the NAS disk, report GPU slots in use (every 5 minutes)."""

from __future__ import annotations

from typing import Annotated, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from gpuflow.core.events import GpuflowEvent, emit_nas_event
from gpuflow.gpu.capacity import GpuSlotUsage, gpu_slot_usage
from gpuflow.gpu.reconcile import ReconcileReport, reconcile_gpu_slots
from gpuflow.pipeline.housekeeping import DiskUsage, WorkspaceCleanup, clean_workspaces, disk_usage
from gpuflow.pipeline.stack import GpuflowStack


class JanitorPolicy(BaseModel):
    """How the janitor decides what to remove and when to warn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_age_hours: Annotated[
        float,
        Field(
            gt=0,
            le=24 * 365,
            description=(
                "Remove a workspace without a failure marker once it is this old and its run "
                "is no longer active (failed runs' workspaces go when their keep time is over)."
            ),
        ),
    ] = 24.0
    disk_warning_percent: Annotated[
        float,
        Field(
            gt=0,
            le=100,
            description="Emit a gpuflow.nas.disk-warning event when the NAS is fuller than this.",
        ),
    ] = 70.0
    dry_run: Annotated[
        bool, Field(description="Report what would be removed without removing anything.")
    ] = False


class JanitorReport(BaseModel):
    workspaces: WorkspaceCleanup
    disk: DiskUsage
    disk_used_percent: float
    disk_warning: bool
    gpu_slots: list[GpuSlotUsage]
    models_evicted: list[str] = []


@task(cache_policy=NO_CACHE)
def evict_models(stack: GpuflowStack, policy: JanitorPolicy) -> list[str]:
    """Keep the model cache within the stack's budget (never a model in use or filling)."""
    budget = stack.model_cache_max_bytes
    if budget is None or policy.dry_run:
        return []
    evicted = stack.model_cache.evict_least_recently_used(budget)
    logger = get_run_logger()
    for path in evicted:
        logger.info("Evicted model %s (cache budget %d bytes)", path, budget)
    return [str(path) for path in evicted]


@task(cache_policy=NO_CACHE)
async def remove_stale_workspaces(stack: GpuflowStack, policy: JanitorPolicy) -> WorkspaceCleanup:
    cleanup = await clean_workspaces(
        stack.nas_root, policy.max_age_hours * 3600, dry_run=policy.dry_run
    )
    get_run_logger().info(
        "%s %d of %d workspace(s), %d bytes freed; kept %d active, %d young, %d failed "
        "(within their keep time); %d unrecognised entries left alone",
        "Would remove" if policy.dry_run else "Removed",
        cleanup.removed,
        cleanup.scanned,
        cleanup.bytes_freed,
        cleanup.kept_active,
        cleanup.kept_young,
        cleanup.kept_failed,
        cleanup.unrecognised,
    )
    return cleanup


@task(cache_policy=NO_CACHE)
def check_nas_disk(stack: GpuflowStack, policy: JanitorPolicy) -> DiskUsage:
    usage = disk_usage(stack.nas_root)
    logger = get_run_logger()
    if usage.used_percent > policy.disk_warning_percent:
        logger.warning(
            "NAS %s is %.1f%% full (warning above %.1f%%): %d bytes free",
            usage.path,
            usage.used_percent,
            policy.disk_warning_percent,
            usage.free_bytes,
        )
        emit_nas_event(
            GpuflowEvent.DISK_WARNING,
            usage.path,
            {
                "used_percent": round(usage.used_percent, 2),
                "threshold_percent": policy.disk_warning_percent,
                "free_bytes": usage.free_bytes,
                "total_bytes": usage.total_bytes,
            },
        )
    else:
        logger.info("NAS %s is %.1f%% full", usage.path, usage.used_percent)
    return usage


@task(cache_policy=NO_CACHE)
async def read_gpu_slots(stack: GpuflowStack) -> list[GpuSlotUsage]:
    """GPU slots in use per limit: the names the slot reconciliation works on."""
    usage = await gpu_slot_usage(stack.gpu_limit)
    for item in usage:
        get_run_logger().info(
            "GPU limit %s: %d of %d slot(s) in use", item.name, item.active_slots, item.limit
        )
    return usage


@task(cache_policy=NO_CACHE)
async def reconcile_gpu_slot_leases(
    stack: GpuflowStack, slots: list[GpuSlotUsage], repair: bool
) -> ReconcileReport:
    """Compare active slots with the jobs really running; release dead holders' leases."""
    report = await reconcile_gpu_slots([item.name for item in slots], repair, stack.job_registry)
    logger = get_run_logger()
    for line in report.summary().splitlines():
        (logger.info if report.consistent else logger.warning)("%s", line)
    return report


@flow(name="gpuflow-janitor")
async def janitor(stack: str = "default", policy: JanitorPolicy | None = None) -> JanitorReport:
    """Remove stale workspaces, evict models over the cache's budget, report NAS disk usage
    and reconcile the GPU slots.

    Args:
        stack: Name of the saved gpuflow-stack block whose NAS to clean.
        policy: Maximum age, disk warning threshold, dry run.
    """
    policy = policy or JanitorPolicy()
    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    cleanup = await remove_stale_workspaces(pipeline, policy)
    evicted = evict_models(pipeline, policy)
    usage = check_nas_disk(pipeline, policy)
    slots = await read_gpu_slots(pipeline)
    reconciled = await reconcile_gpu_slot_leases(pipeline, slots, repair=not policy.dry_run)
    report = JanitorReport(
        workspaces=cleanup,
        disk=usage,
        disk_used_percent=round(usage.used_percent, 2),
        disk_warning=usage.used_percent > policy.disk_warning_percent,
        gpu_slots=slots,
        models_evicted=evicted,
    )
    rows: list[dict[str, object]] = [
        {"measure": "workspaces scanned", "value": cleanup.scanned},
        {"measure": "workspaces removed", "value": cleanup.removed},
        {"measure": "bytes freed", "value": cleanup.bytes_freed},
        {"measure": "kept: run active", "value": cleanup.kept_active},
        {"measure": "kept: younger than max age", "value": cleanup.kept_young},
        {"measure": "kept: failed, within keep time", "value": cleanup.kept_failed},
        {"measure": "models evicted", "value": len(evicted)},
        {"measure": "NAS used %", "value": report.disk_used_percent},
        {"measure": "NAS free bytes", "value": usage.free_bytes},
    ]
    rows += [
        {"measure": f"GPU slots in use: {item.name}", "value": f"{item.active_slots}/{item.limit}"}
        for item in slots
    ]
    rows += [
        {"measure": "GPU slots consistent", "value": reconciled.consistent},
        {"measure": "dead GPU holders released", "value": len(reconciled.released_leases)},
    ]
    await acreate_table_artifact(
        rows,
        description="Janitor: workspaces removed and NAS disk usage",
    )
    return report
