"""What a GPU job says while it runs: progress into a Prefect progress artifact (and an
event), its outputs and other lines into the run's log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TextIO
from uuid import UUID

import httpx
from gpuflow_progress import Output, Progress, parse_line
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

from gpuflow.compute.base import JobSpec
from gpuflow.core.events import GpuflowEvent, emit_run_event
from gpuflow.core.logs import RunLogger

_PROGRESS_INTERVAL_S = 0.5


class ProgressReporter:
    """The job's progress artifact; best effort, so a Prefect server restart while the job
    runs loses a few progress updates, never the job."""

    def __init__(self, job_name: str, logger: RunLogger) -> None:
        self.job_name = job_name
        self.logger = logger
        self._created: asyncio.Future[object] | None = None
        self.last_update = 0.0

    async def _call(self, update: Coroutine[Any, Any, object]) -> object:
        try:
            return await update
        except (httpx.HTTPError, OSError) as exc:
            self.logger.warning("Progress not reported (%s)", exc)
            return None

    async def __aenter__(self) -> ProgressReporter:
        # Created beside the wait for GPUs, not before it: one API call less between a
        # flow's start and its job's (under a burst of flow starts, each call waits its turn).
        self._created = asyncio.ensure_future(
            self._call(
                acreate_progress_artifact(0.0, description=f"{self.job_name}: waiting for GPUs")
            )
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._artifact()

    async def _artifact(self) -> UUID | None:
        if self._created is None:
            return None
        created = await asyncio.shield(self._created)
        return created if isinstance(created, UUID) else None

    async def update(self, event: Progress) -> bool:
        """Report ``event`` unless one was reported moments ago; True when it was."""
        now = time.monotonic()
        if now - self.last_update < _PROGRESS_INTERVAL_S and event.done < event.total:
            return False
        artifact_id = await self._artifact()
        if artifact_id is None:
            return False
        self.last_update = now
        await self._call(
            aupdate_progress_artifact(
                artifact_id, event.percent, description=f"{self.job_name}: {event.message}"
            )
        )
        return True

    async def finish(self) -> None:
        artifact_id = await self._artifact()
        if artifact_id is not None:
            await self._call(
                aupdate_progress_artifact(artifact_id, 100.0, description=f"{self.job_name}: done")
            )


class JobLineHandler:
    """Progress lines to ``progress``, output announcements and other lines to the log.

    Every line goes to ``<workspace>/logs/<job>.log`` (up to ``max_log_bytes``); the run's
    log gets them at ``lines_per_s`` after a burst of ``burst_lines``, so a job that prints
    a flood (a progress bar redrawn per step) cannot flood the Prefect API. The run's log
    says how many lines it skipped and where the full log is."""

    def __init__(
        self,
        job: JobSpec,
        progress: ProgressReporter,
        logger: RunLogger,
        burst_lines: int = 200,
        lines_per_s: float = 20.0,
        max_log_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.job = job
        self.progress = progress
        self.logger = logger
        self.burst_lines = burst_lines
        self.lines_per_s = lines_per_s
        self.max_log_bytes = max_log_bytes
        self.log_path = job.workdir / "logs" / f"{job.name}.log"
        self.log_bytes = 0
        self.allowance = float(burst_lines)
        self.refilled_at = time.monotonic()
        self.dropped = 0
        self._log_file: TextIO | None = None

    async def __call__(self, line: str) -> None:
        self._keep(line)
        event = parse_line(line)
        if isinstance(event, Progress):
            if await self.progress.update(event):
                emit_run_event(
                    GpuflowEvent.JOB_PROGRESS,
                    self.job.workdir.name,
                    job=self.job.name,
                    payload={"percent": event.percent, "message": event.message},
                )
        elif isinstance(event, Output):
            self.logger.info("Job output %s: %s", event.name, event.path)
        elif event is None and self._admit():
            self.logger.info("%s", line)

    def close(self) -> None:
        """Say what was skipped, and close the full log."""
        self._report_dropped()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _admit(self) -> bool:
        now = time.monotonic()
        self.allowance = min(
            float(self.burst_lines), self.allowance + (now - self.refilled_at) * self.lines_per_s
        )
        self.refilled_at = now
        if self.allowance < 1:
            self.dropped += 1
            return False
        self.allowance -= 1
        self._report_dropped()
        return True

    def _report_dropped(self) -> None:
        if self.dropped:
            self.logger.warning(
                "%d lines of job output were not sent to this log (more than %g lines/s); "
                "all of them are in %s",
                self.dropped,
                self.lines_per_s,
                self.log_path,
            )
            self.dropped = 0

    def _keep(self, line: str) -> None:
        if self.log_bytes >= self.max_log_bytes:
            return
        try:
            if self._log_file is None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log_file = self.log_path.open("a", encoding="utf-8", errors="replace")
            text = line + "\n"
            self.log_bytes += len(text.encode("utf-8", errors="replace"))
            if self.log_bytes >= self.max_log_bytes:
                text = (
                    f"[gpuflow: the log stops here, at its limit of {self.max_log_bytes} bytes]\n"
                )
            self._log_file.write(text)
        except OSError as exc:
            # The workspace copy is a convenience: a full disk must not fail the job.
            self.log_bytes = self.max_log_bytes
            self.logger.warning("Job log %s not written: %s", self.log_path, exc)


def job_line_handler(job: JobSpec, progress: ProgressReporter, logger: RunLogger) -> JobLineHandler:
    return JobLineHandler(job, progress, logger)
