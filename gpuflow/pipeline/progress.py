"""What a GPU job says while it runs: progress into a Prefect progress artifact (and an
event), its outputs and other lines into the run's log."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

import httpx
from gpuflow_progress import Output, Progress, parse_line
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

from gpuflow.compute.base import JobSpec, LineHandler
from gpuflow.core.events import GpuflowEvent, emit_run_event
from gpuflow.core.logs import RunLogger

_PROGRESS_INTERVAL_S = 0.5


class ProgressReporter:
    """The job's progress artifact; best effort, so a Prefect server restart while the job
    runs loses a few progress updates, never the job."""

    def __init__(self, job_name: str, logger: RunLogger) -> None:
        self.job_name = job_name
        self.logger = logger
        self.artifact_id: UUID | None = None
        self.last_update = 0.0

    async def _call(self, update: Coroutine[Any, Any, object]) -> object:
        try:
            return await update
        except (httpx.HTTPError, OSError) as exc:
            self.logger.warning("Progress not reported (%s)", exc)
            return None

    async def start(self) -> None:
        created = await self._call(
            acreate_progress_artifact(0.0, description=f"{self.job_name}: waiting for GPUs")
        )
        self.artifact_id = created if isinstance(created, UUID) else None

    async def update(self, event: Progress) -> bool:
        """Report ``event`` unless one was reported moments ago; True when it was."""
        now = time.monotonic()
        if self.artifact_id is None or (
            now - self.last_update < _PROGRESS_INTERVAL_S and event.done < event.total
        ):
            return False
        self.last_update = now
        await self._call(
            aupdate_progress_artifact(
                self.artifact_id, event.percent, description=f"{self.job_name}: {event.message}"
            )
        )
        return True

    async def finish(self) -> None:
        if self.artifact_id is not None:
            await self._call(
                aupdate_progress_artifact(
                    self.artifact_id, 100.0, description=f"{self.job_name}: done"
                )
            )


def job_line_handler(job: JobSpec, progress: ProgressReporter, logger: RunLogger) -> LineHandler:
    """Progress lines to ``progress``, output announcements and other lines to the log."""

    async def on_line(line: str) -> None:
        event = parse_line(line)
        if isinstance(event, Progress):
            if await progress.update(event):
                emit_run_event(
                    GpuflowEvent.JOB_PROGRESS,
                    job.workdir.name,
                    job=job.name,
                    payload={"percent": event.percent, "message": event.message},
                )
        elif isinstance(event, Output):
            logger.info("Job output %s: %s", event.name, event.path)
        elif event is None:
            logger.info("%s", line)

    return on_line
