"""gpuflow's Prefect events: what happened to a run, for Automations and notifications.

Every event names the run as its resource (``gpuflow.run.<flow-run-id>``) and the Prefect
flow run (and the job, where there is one) as related resources, so an Automation can
match ``gpuflow.run.failed`` for one deployment, one job or everything. Examples of
Automations built on them are in docs/daily-use.md.
"""

from __future__ import annotations

import enum
from typing import Any

from prefect.events import emit_event


class GpuflowEvent(enum.StrEnum):
    RUN_QUEUED = "gpuflow.run.queued"
    GPU_ADMITTED = "gpuflow.gpu.admitted"
    JOB_STARTED = "gpuflow.job.started"
    JOB_PROGRESS = "gpuflow.job.progress"
    RUN_COMPLETED = "gpuflow.run.completed"
    RUN_FAILED = "gpuflow.run.failed"
    DISK_WARNING = "gpuflow.nas.disk-warning"


def run_resource(run_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"gpuflow.run.{run_id}", "prefect.resource.name": run_id}


def emit_run_event(
    event: GpuflowEvent,
    run_id: str,
    *,
    job: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """Emit ``event`` about one run (and its job); values in ``payload`` must be JSON-able."""
    related = [
        {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}
    ]
    if job is not None:
        related.append(
            {
                "prefect.resource.id": f"gpuflow.job.{job}",
                "prefect.resource.role": "job",
                "prefect.resource.name": job,
            }
        )
    emit_event(event=event.value, resource=run_resource(run_id), related=related, payload=payload)


def emit_nas_event(event: GpuflowEvent, nas_root: str, payload: dict[str, Any]) -> None:
    """Emit ``event`` about the shared storage itself (e.g. the disk filling up)."""
    emit_event(
        event=event.value,
        resource={
            "prefect.resource.id": f"gpuflow.nas.{nas_root}",
            "prefect.resource.name": nas_root,
        },
        payload=payload,
    )
