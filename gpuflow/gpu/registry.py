"""The registry of running GPU jobs on the NAS: who holds which GPU lease.

Each job holding GPU slots has one record, ``<nas>/gpu-jobs/<lease-id>.json`` (lease,
limits, slots, flow run, host and pid of the flow process that owns the job), written
once the slots are granted and removed once they are given back. The reconciliation
step compares it with the limits' active slots and the flow runs' states.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)


class RunningJob(BaseModel):
    lease_id: str
    limits: list[str]
    slots: int
    job_name: str
    flow_run_id: str | None
    host: str
    pid: int
    started_at: float
    # The lease's duration: the holder refreshes its record at least this often, so an
    # older record belongs to a dead holder. None in records from before it was kept.
    lease_s: float | None = None

    @classmethod
    def here(
        cls,
        lease_id: str,
        limits: list[str],
        slots: int,
        job_name: str,
        flow_run_id: str | None,
        lease_s: float | None = None,
    ) -> RunningJob:
        """A record for a job owned by this process."""
        return cls(
            lease_id=lease_id,
            limits=limits,
            slots=slots,
            job_name=job_name,
            flow_run_id=flow_run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
            lease_s=lease_s,
        )


class JobRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, lease_id: str) -> Path:
        return self.root / f"{lease_id}.json"

    def record(self, job: RunningJob) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{job.lease_id}.tmp"
        temporary.write_text(job.model_dump_json())
        temporary.replace(self._path(job.lease_id))  # readers never see half a record

    def refresh(self, lease_id: str) -> None:
        """Say the record's holder is still alive (its mtime is the last sign of life)."""
        try:
            os.utime(self._path(lease_id))
        except OSError as exc:  # a NAS hiccup: the next refresh tries again
            logger.warning("Job record %s not refreshed: %s", lease_id, exc)

    def seen_at(self, job: RunningJob) -> float | None:
        """When the holder of ``job`` last refreshed its record (epoch seconds)."""
        try:
            return self._path(job.lease_id).stat().st_mtime
        except OSError:
            return None

    def current(self, lease_id: str) -> RunningJob | None:
        """The record of ``lease_id`` as it is now (None if gone or unreadable)."""
        try:
            return RunningJob.model_validate(json.loads(self._path(lease_id).read_text()))
        except (OSError, ValueError, ValidationError):
            return None

    def remove(self, lease_id: str) -> None:
        self._path(lease_id).unlink(missing_ok=True)

    @contextlib.contextmanager
    def recorded(self, job: RunningJob) -> Iterator[None]:
        self.record(job)
        try:
            yield
        finally:
            self.remove(job.lease_id)

    def jobs(self) -> tuple[list[RunningJob], list[Path]]:
        """The recorded jobs, and the record files that cannot be read (reported, kept)."""
        found: list[RunningJob] = []
        broken: list[Path] = []
        if not self.root.is_dir():
            return found, broken
        for path in sorted(self.root.glob("*.json")):
            try:
                found.append(RunningJob.model_validate(json.loads(path.read_text())))
            except (OSError, ValueError, ValidationError) as exc:
                logger.warning("Unreadable job record %s: %s", path, exc)
                broken.append(path)
        return found, broken
