"""Garbage collection of environments: by last use and age, never one in use.

An env is kept when it is pinned, when it is a job's current env (unless the
policy says otherwise: evicting it makes the next run wait for a build), when a
run holds it (a shared flock on its hold file, ``EnvCatalog.hold``), or
when it is being built. Otherwise it goes when it has not been used for
``max_idle`` or was built more than ``max_age`` ago. An evicted env is first
renamed into ``envs/.trash/`` under its hold and build locks, so no resolve can
see it half-deleted; then the trash is emptied. The remains of builds that died
(a directory without a ready marker whose build lock is free) go the same way.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpuflow.core.locks import exclusive_lock_if_free
from gpuflow.envs.catalog import EnvCatalog
from gpuflow.envs.records import now as utc_now


class GcPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_idle: timedelta = Field(
        default=timedelta(days=14), ge=timedelta(0), description="Evict envs unused this long."
    )
    max_age: timedelta | None = Field(
        default=None, description="Also evict envs built longer ago than this, used or not."
    )
    keep_current: bool = Field(default=True, description="Never evict a job's current env.")


GcAction = Literal["evicted", "kept", "would evict"]


@dataclass(frozen=True)
class GcDecision:
    key: str
    action: GcAction
    reason: str


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def _expiry(fabric: EnvCatalog, key: str, policy: GcPolicy, now: datetime) -> str | None:
    """Why ``key`` should go under ``policy``, or None when it is still wanted."""
    metadata = fabric.metadata(key)
    if metadata is None:
        return None
    idle = now - metadata.last_used
    if idle >= policy.max_idle:
        return f"unused for {_age(idle)}"
    built = now - metadata.created
    if policy.max_age is not None and built >= policy.max_age:
        return f"built {_age(built)} ago"
    return None


def _move_to_trash(fabric: EnvCatalog, key: str) -> None:
    trash = fabric.trash_dir()
    trash.mkdir(parents=True, exist_ok=True)
    fabric.env_dir(key).rename(trash / f"{key}-{uuid.uuid4().hex[:8]}")


def empty_trash(fabric: EnvCatalog) -> None:
    trash = fabric.trash_dir()
    if trash.is_dir():
        for entry in trash.iterdir():
            shutil.rmtree(entry, ignore_errors=True)


def prune_bytecode(fabric: EnvCatalog) -> int:
    """Remove shared ``.pyc`` files no env links to any more; returns how many."""
    removed = 0
    if fabric.bytecode_dir.is_dir():
        for entry in fabric.bytecode_dir.iterdir():
            # A builder that loses a file here between compiling and linking it
            # compiles it in place instead (shared_bytecode._link).
            if entry.stat().st_nlink == 1:
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def collect_garbage(
    fabric: EnvCatalog,
    policy: GcPolicy,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[GcDecision]:
    """Evict what ``policy`` lets go; returns one decision per env directory."""
    now = now or utc_now()
    pinned = {pin.key: pin.job for pin in fabric.pins()}
    current = {r.current: r.job for r in fabric.job_records()} if policy.keep_current else {}
    evict: GcAction = "would evict" if dry_run else "evicted"
    decisions: list[GcDecision] = []
    for key in fabric.env_keys():
        if key in pinned:
            decisions.append(GcDecision(key, "kept", f"pinned by job {pinned[key]!r}"))
            continue
        if key in current:
            decisions.append(GcDecision(key, "kept", f"current env of job {current[key]!r}"))
            continue
        unfinished = not fabric.ready(key)
        reason = "unfinished build" if unfinished else _expiry(fabric, key, policy, now)
        if reason is None:
            decisions.append(GcDecision(key, "kept", "recently used"))
            continue
        with (
            exclusive_lock_if_free(fabric.build_lock_path(key)) as not_building,
            exclusive_lock_if_free(fabric.hold_path(key)) as not_held,
        ):
            if not not_building:
                decisions.append(GcDecision(key, "kept", "being built"))
            elif not not_held:
                decisions.append(GcDecision(key, "kept", "held by a running flow"))
            elif not unfinished and _expiry(fabric, key, policy, now) is None:
                # A resolve touched it between the first look and the locks.
                decisions.append(GcDecision(key, "kept", "used just now"))
            else:
                if not dry_run:
                    _move_to_trash(fabric, key)
                decisions.append(GcDecision(key, evict, reason))
    if not dry_run:
        empty_trash(fabric)
        prune_bytecode(fabric)
    return decisions
