"""The environment catalog: prebuilt, content-addressed uv environments on the NAS.

A job is a uv project (``pyproject.toml`` + ``uv.lock`` + code). Its key hashes
everything that determines the environment (``gpuflow/envs/key.py``);
``envs/<key>/.venv`` is built once by ``uv sync --frozen`` with the uv cache on the
same filesystem (packages become hardlinks into one cache) and marked ready by
``metadata.json`` written last, so a crashed build never looks ready. Builds
happen ahead of time (``flows/prebuild.py``, ``gpuflow env build``); at run time a
ready env resolves from a few small files, with no process started and no
Prefect server needed (a pod can resolve from the NAS alone).

This module imports no Prefect (``gpuflow env`` answers from it without Prefect's
second of import); ``gpuflow/envs/fabric.py`` is the same catalog as a Prefect block.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.core.locks import LockTimeoutError, exclusive_lock, shared_lock
from gpuflow.envs import builder
from gpuflow.envs.key import StatIndex, environment_key
from gpuflow.envs.records import (
    METADATA,
    BaseInterpreter,
    EnvMetadata,
    JobRecord,
    Pin,
    now,
    write_atomically,
)

__all__ = ["METADATA", "EnvCatalog", "ResolvedEnv", "console_script", "environment_key"]

_HISTORY_LENGTH = 20


@dataclass(frozen=True)
class ResolvedEnv:
    key: str
    root: Path
    built: bool  # True when this call built it, False when it was ready
    pinned: bool = False
    link_mode: str = "hardlink"  # "copy" when uv could not hardlink from its cache

    @property
    def venv(self) -> Path:
        return self.root / ".venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.venv / "bin" / name

    def interpreter(self) -> BaseInterpreter | None:
        """The interpreter the venv runs on, read from the venv (None while it is unbuilt,
        as for a dry run's preview): a container running the env must have it."""
        try:
            return builder.venv_interpreter(self.venv)
        except OSError:
            return None


def console_script(project_dir: Path) -> str:
    """The job's entry point: the single ``[project.scripts]`` name of its pyproject."""
    project = tomllib.loads((project_dir / "pyproject.toml").read_text()).get("project", {})
    scripts = list(project.get("scripts", {}))
    if len(scripts) != 1:
        raise EnvironmentBuildError(
            f"job project {project_dir} must declare exactly one [project.scripts] entry, "
            f"found {scripts or 'none'}"
        )
    return str(scripts[0])


class EnvCatalog(BaseModel):
    """Prebuilt uv environments for jobs, shared by every run on one NAS."""

    root: Path = Field(description="NAS directory holding envs/, the uv cache and uv's Pythons.")
    build_timeout_s: float = Field(default=1800.0, gt=0, description="Longest a build may take.")
    cache_dir: Path | None = Field(
        default=None,
        description=(
            "uv cache; default <root>/uv-cache. Keep it on the filesystem of <root>/envs: "
            "elsewhere uv copies every package instead of hardlinking it (reported as such)."
        ),
    )
    python: str = Field(
        default="",
        description=(
            "Interpreter of the envs: a path or a version such as 3.11.7; empty means the "
            "interpreter running gpuflow. It is part of every key."
        ),
    )
    managed_python: bool = Field(
        default=False,
        description=(
            "Build on a uv-managed Python installed under <root>/python (on the NAS), so the "
            "venvs' base interpreter exists at the same path in every pod and task."
        ),
    )
    touch_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="A resolve refreshes an env's last-use time when it is older than this.",
    )

    # -- layout ------------------------------------------------------------------------

    @property
    def envs_dir(self) -> Path:
        return self.root / "envs"

    @property
    def uv_cache_dir(self) -> Path:
        return self.cache_dir or self.root / "uv-cache"

    @property
    def python_install_dir(self) -> Path:
        return self.root / "python"

    @property
    def bytecode_dir(self) -> Path:
        """Compiled ``.pyc`` files shared by every env (hardlinked, like the packages)."""
        return self.root / "bytecode"

    def env_dir(self, key: str) -> Path:
        return self.envs_dir / key

    def _state(self, name: str) -> Path:
        return self.envs_dir / f".{name}"

    def hold_path(self, key: str) -> Path:
        return self._state("holds") / f"{key}.hold"

    def build_lock_path(self, key: str) -> Path:
        return self._state("locks") / f"{key}.lock"

    def trash_dir(self) -> Path:
        return self._state("trash")

    def _job_path(self, job: str) -> Path:
        return self._state("jobs") / f"{_safe_name(job)}.json"

    def _pin_path(self, job: str) -> Path:
        return self._state("pins") / f"{_safe_name(job)}.json"

    @property
    def python_version(self) -> str:
        """What the key records of the interpreter."""
        return self.python or platform.python_version()

    def build_settings(self) -> builder.BuildSettings:
        return builder.BuildSettings(
            cache_dir=self.uv_cache_dir,
            bytecode_store=self.bytecode_dir,
            python_install_dir=self.python_install_dir,
            python=self.python or sys.executable,
            managed_python=self.managed_python,
            timeout_s=self.build_timeout_s,
        )

    # -- keys ---------------------------------------------------------------------------

    def key(self, project_dir: Path) -> str:
        """The job's content key: from the stat index when nothing changed, else hashed."""
        key, _ = self._key(project_dir.resolve())
        return key

    def _key(self, project_dir: Path) -> tuple[str, bool]:
        index = StatIndex(self._state("sources"))
        known = index.lookup(project_dir, self.python_version)
        if known is not None:
            return known, False
        return index.compute(project_dir, self.python_version), True

    # -- readiness and metadata ----------------------------------------------------------

    def ready(self, key: str) -> bool:
        return self._ready(key, touch=False) is not None

    def _ready(self, key: str, touch: bool) -> str | None:
        """The env's link mode when it is ready, else None (no process, a file or two)."""
        path = self.env_dir(key) / METADATA
        try:
            with path.open("rb") as handle:
                modified = os.fstat(handle.fileno()).st_mtime
                recorded = json.loads(handle.read())
        except (OSError, ValueError):
            return None
        if recorded.get("status") != "ready":
            return None
        if touch and time.time() - modified > self.touch_interval_s:
            # The file's mtime is the env's last use (read back into metadata.last_used).
            # utime never creates a file, so it cannot make an evicted env look ready.
            try:
                os.utime(path)
            except OSError:
                return None
        return str(recorded.get("link_mode", "hardlink"))

    def metadata(self, key: str) -> EnvMetadata | None:
        """The env's metadata with its live last-use time; None when it is not ready."""
        path = self.env_dir(key) / METADATA
        try:
            metadata = EnvMetadata.model_validate_json(path.read_bytes())
            used = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except (OSError, ValidationError):
            return None
        return metadata.model_copy(update={"last_used": max(metadata.last_used, used)})

    def env_keys(self) -> list[str]:
        """Every env directory, ready or not (an unready one is a build or its wreck)."""
        if not self.envs_dir.is_dir():
            return []
        return sorted(p.name for p in self.envs_dir.iterdir() if not p.name.startswith("."))

    # -- resolve and build ----------------------------------------------------------------

    def resolve(self, project_dir: Path, job: str | None = None) -> ResolvedEnv:
        """The env a run of this job uses: its pin if pinned, else its sources' env.

        Builds only when no ready env exists (a prebuild normally made it already).
        """
        job = job or project_dir.name
        pin = self.pin_of(job)
        if pin is not None:
            return self._pinned(pin)
        return self.ensure(project_dir, job)

    def resolve_job(self, job: str) -> ResolvedEnv:
        """The env of a job by name alone (pin, else the last prebuilt key): never builds.

        For pods and tasks that have the NAS but not the job's sources.
        """
        pin = self.pin_of(job)
        if pin is not None:
            return self._pinned(pin)
        record = self.job_record(job)
        if record is None:
            raise EnvironmentBuildError(
                f"job {job!r} has no environment yet: run `gpuflow env build` or the "
                "prebuild flow for it first"
            )
        link_mode = self._ready(record.current, touch=True)
        if link_mode is None:
            raise EnvironmentBuildError(
                f"environment {record.current} of job {job!r} is not ready (evicted or never "
                "finished): build it again"
            )
        return ResolvedEnv(
            record.current, self.env_dir(record.current), built=False, link_mode=link_mode
        )

    def ensure(self, project_dir: Path, job: str | None = None) -> ResolvedEnv:
        """The env the job's sources hash to, built now if it is not ready (ignores pins)."""
        project_dir = project_dir.resolve()
        job = job or project_dir.name
        key, hashed = self._key(project_dir)
        root = self.env_dir(key)
        built = False
        link_mode = self._ready(key, touch=True)
        if link_mode is None:
            built = self._build_once(project_dir, key, job)
            link_mode = self._ready(key, touch=False) or "hardlink"
        if hashed or built:
            self._record_job(job, project_dir, key)
        return ResolvedEnv(key, root, built=built, link_mode=link_mode)

    def _build_once(self, project_dir: Path, key: str, job: str) -> bool:
        """Build ``key`` unless another process did while we waited; True if we built."""
        try:
            with exclusive_lock(self.build_lock_path(key), self.build_timeout_s):
                if self._ready(key, touch=True) is not None:
                    return False
                self._build(project_dir, key, job)
                return True
        except LockTimeoutError:
            raise EnvironmentBuildError(
                f"waited {self.build_timeout_s:.0f}s for another build of environment {key} "
                f"(job {job!r}) to finish"
            ) from None

    def _build(self, project_dir: Path, key: str, job: str) -> None:
        root = self.env_dir(key)
        # A directory without a ready marker is the wreck of a build that died: we hold
        # the build lock, so nobody is still writing to it.
        shutil.rmtree(root, ignore_errors=True)
        for directory in (
            self.envs_dir,
            self.uv_cache_dir,
            self.python_install_dir,
            self.bytecode_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        try:
            metadata = builder.build(self.build_settings(), project_dir, root, key, job)
            for name in ("pyproject.toml", "uv.lock"):
                shutil.copy2(project_dir / name, root / name)
            write_atomically(root / METADATA, metadata.model_dump_json(indent=2))
        except EnvironmentBuildError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        except OSError as exc:  # a full disk, a vanished project, a permission
            shutil.rmtree(root, ignore_errors=True)
            raise EnvironmentBuildError(
                f"building environment {key} of {project_dir} failed: {exc}"
            ) from exc
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    # -- holds, jobs and pins -------------------------------------------------------------

    @contextmanager
    def hold(self, key: str, timeout_s: float = 30.0) -> Iterator[ResolvedEnv]:
        """Keep GC away from ``key`` while a run uses it: GC evicts an env only after taking
        its hold file exclusively without waiting, and the kernel drops the hold of a run
        that dies. Waits only while GC holds it (a rename long)."""
        with shared_lock(self.hold_path(key), timeout_s):
            if not self.ready(key):
                raise EnvironmentBuildError(
                    f"environment {key} is no longer ready (evicted before the run held it); "
                    "resolve it again"
                )
            yield ResolvedEnv(key, self.env_dir(key), built=False)

    def job_record(self, job: str) -> JobRecord | None:
        try:
            return JobRecord.model_validate_json(self._job_path(job).read_bytes())
        except (OSError, ValidationError):
            return None

    def job_records(self) -> list[JobRecord]:
        directory = self._state("jobs")
        if not directory.is_dir():
            return []
        records = [self.job_record(p.stem) for p in sorted(directory.glob("*.json"))]
        return [record for record in records if record is not None]

    def _record_job(self, job: str, project_dir: Path, key: str) -> None:
        previous = self.job_record(job)
        if previous is not None and previous.current == key:
            return
        history = [] if previous is None else [previous.current, *previous.history]
        record = JobRecord(
            job=job,
            project=str(project_dir),
            current=key,
            history=[k for k in dict.fromkeys(history) if k != key][:_HISTORY_LENGTH],
            updated=now(),
        )
        write_atomically(self._job_path(job), record.model_dump_json(indent=2))

    def pin_of(self, job: str) -> Pin | None:
        try:
            raw = self._pin_path(job).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Pin.model_validate_json(raw)
        except ValidationError as exc:
            raise EnvironmentBuildError(
                f"pin file {self._pin_path(job)} of job {job!r} is unreadable: {exc}"
            ) from None

    def pins(self) -> list[Pin]:
        directory = self._state("pins")
        if not directory.is_dir():
            return []
        pins = [self.pin_of(p.stem) for p in sorted(directory.glob("*.json"))]
        return [pin for pin in pins if pin is not None]

    def pin(self, job: str, key: str, reason: str = "") -> Pin:
        """Make runs of ``job`` use ``key`` (an earlier, ready env: a rollback)."""
        if not self.ready(key):
            known = ", ".join(self.env_keys()) or "none"
            raise EnvironmentBuildError(
                f"cannot pin job {job!r} to environment {key!r}: no ready env has that key "
                f"(envs here: {known})"
            )
        pin = Pin(job=job, key=key, reason=reason, pinned=now())
        write_atomically(self._pin_path(job), pin.model_dump_json(indent=2))
        return pin

    def unpin(self, job: str) -> bool:
        try:
            self._pin_path(job).unlink()
        except FileNotFoundError:
            return False
        return True

    def _pinned(self, pin: Pin) -> ResolvedEnv:
        link_mode = self._ready(pin.key, touch=True)
        if link_mode is None:
            raise EnvironmentBuildError(
                f"job {pin.job!r} is pinned to environment {pin.key}, which is not ready; "
                f"unpin it (`gpuflow env unpin {pin.job}`) or pin a ready key"
            )
        return ResolvedEnv(
            pin.key, self.env_dir(pin.key), built=False, pinned=True, link_mode=link_mode
        )


def _safe_name(job: str) -> str:
    if not job or job.startswith(".") or "/" in job or "\0" in job:
        raise EnvironmentBuildError(f"invalid job name {job!r}: use a plain directory name")
    return job
