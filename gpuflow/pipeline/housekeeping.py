"""The janitor's work on the NAS: find stale workspaces, remove them, measure the disk.

A workspace ``NAS/workspaces/<flow-run-id>/`` may go when its run is no longer active
(the Prefect API says so; a running job's files are never touched) and

* it carries a failure marker whose keep-until time has passed (kept for debugging), or
* it carries none and is older than the maximum age (a run that crashed or was killed
  before it could clean up; successful runs remove their own workspace).

Entries whose name is neither a flow-run id nor a local run's (``local-<hex>``: no flow run to
ask about, so its files alone decide) are not gpuflow's: they are counted, never removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from pydantic import BaseModel

from gpuflow.core.errors import GpuflowError
from gpuflow.core.workspace import FAILURE_MARKER, LOCAL_RUN_PREFIX, WORKSPACE_NAME

# States in which a flow run may still write to its workspace (AwaitingRetry is SCHEDULED).
ACTIVE_STATE_TYPES = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
]
# The API returns at most this many runs per request.
_API_PAGE = 200
_PARALLEL_QUERIES = 4


@dataclass(frozen=True)
class WorkspaceEntry:
    run_id: str
    path: str  # a str, not a Path: building 10,000 Paths doubles the scan's time
    modified: float
    keep_until: float | None

    def removable(self, now: float, max_age_s: float) -> bool:
        """Whether the files say it may go (the run's state is asked separately)."""
        if self.keep_until is not None:
            return self.keep_until <= now
        return now - self.modified >= max_age_s


@dataclass(frozen=True)
class WorkspaceScan:
    entries: list[WorkspaceEntry]
    unrecognised: list[str]


def _read_keep_until(workspace: str) -> float | None:
    """The failure marker's keep-until time; None without a (readable) marker."""
    marker = os.path.join(workspace, FAILURE_MARKER)  # noqa: PTH118  (hot loop: no Path)
    try:
        with open(marker, encoding="utf-8") as handle:  # noqa: PTH123
            return float(json.load(handle)["keep_until"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scan_workspaces(workspaces_root: Path) -> WorkspaceScan:
    """Every workspace with its age and failure marker: one ``scandir`` and a stat each."""
    entries: list[WorkspaceEntry] = []
    unrecognised: list[str] = []
    try:
        iterator = os.scandir(workspaces_root)
    except FileNotFoundError:
        return WorkspaceScan([], [])
    with iterator:
        for entry in iterator:
            if not WORKSPACE_NAME.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                unrecognised.append(entry.name)
                continue
            entries.append(
                WorkspaceEntry(
                    run_id=entry.name,
                    path=entry.path,
                    modified=entry.stat(follow_symlinks=False).st_mtime,
                    keep_until=_read_keep_until(entry.path),
                )
            )
    return WorkspaceScan(entries, unrecognised)


async def active_run_ids(run_ids: Iterable[str]) -> set[str]:
    """Those of ``run_ids`` whose flow run is active on the Prefect API (others: finished,
    or unknown to the API)."""
    # A local run has no flow run to ask about: its files alone decide.
    ids = [uuid.UUID(run_id) for run_id in run_ids if not run_id.startswith(LOCAL_RUN_PREFIX)]
    chunks = [ids[start : start + _API_PAGE] for start in range(0, len(ids), _API_PAGE)]
    gate = asyncio.Semaphore(_PARALLEL_QUERIES)
    async with get_client() as client:

        async def ask(chunk: list[uuid.UUID]) -> set[str]:
            async with gate:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=chunk),
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=ACTIVE_STATE_TYPES)
                        ),
                    ),
                    limit=_API_PAGE,
                )
            return {str(run.id) for run in runs}

        answers = await asyncio.gather(*(ask(chunk) for chunk in chunks))
    return set().union(*answers)


def tree_size(path: str) -> int:
    """Bytes of the regular files under ``path`` (symlinks are not followed)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


class WorkspaceCleanup(BaseModel):
    """What one pass over the workspaces found and did."""

    scanned: int
    removed: int
    bytes_freed: int
    kept_active: int
    kept_young: int
    kept_failed: int
    unrecognised: int
    dry_run: bool
    removed_run_ids: list[str]


async def clean_workspaces(
    nas_root: Path, max_age_s: float, *, dry_run: bool = False, now: float | None = None
) -> WorkspaceCleanup:
    """Remove the stale workspaces under ``nas_root`` (see the module docstring)."""
    now = time.time() if now is None else now
    scan = scan_workspaces(nas_root / "workspaces")
    candidates = [entry for entry in scan.entries if entry.removable(now, max_age_s)]
    waiting = [entry for entry in scan.entries if not entry.removable(now, max_age_s)]
    active = await active_run_ids(entry.run_id for entry in candidates) if candidates else set()
    removed: list[str] = []
    freed = 0
    for entry in candidates:
        if entry.run_id in active:
            continue
        freed += tree_size(entry.path)
        if not dry_run:
            shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.run_id)
    return WorkspaceCleanup(
        scanned=len(scan.entries),
        removed=len(removed),
        bytes_freed=freed,
        kept_active=len(active),
        kept_young=sum(1 for entry in waiting if entry.keep_until is None),
        kept_failed=sum(1 for entry in waiting if entry.keep_until is not None),
        unrecognised=len(scan.unrecognised),
        dry_run=dry_run,
        removed_run_ids=sorted(removed),
    )


class DiskUsage(BaseModel):
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 0.0


class NasUnavailableError(GpuflowError):
    """The NAS root is missing here: not mounted, or mounted at another path."""


def disk_usage(path: Path) -> DiskUsage:
    try:
        usage = shutil.disk_usage(path)
    except FileNotFoundError:
        raise NasUnavailableError(
            f"NAS root {path} does not exist: is the shared storage mounted at this path here?"
        ) from None
    return DiskUsage(
        path=str(path),
        total_bytes=usage.total,
        used_bytes=usage.total - usage.free,
        free_bytes=usage.free,
    )
