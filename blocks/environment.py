"""The environment fabric: prebuilt, content-addressed uv environments on the NAS.

A job is a uv project (``pyproject.toml`` + ``uv.lock`` + code). Its key hashes
everything that determines the environment; ``envs/<key>/.venv`` is built once by
``uv sync --frozen`` with the uv cache on the same filesystem (packages become
hardlinks into one cache) and marked ready by ``metadata.json`` written last, so a
crashed build never looks ready. The venv is built at its final path because
venvs are not relocatable (console-script shebangs hold absolute paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uv
from prefect.blocks.core import Block
from pydantic import Field

from gpuflow.errors import EnvironmentBuildError
from gpuflow.locks import exclusive_lock

METADATA = "metadata.json"
_SKIPPED_DIRS = {".venv", "__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
_HARDLINK_FALLBACK = "Failed to hardlink"


@dataclass(frozen=True)
class ResolvedEnv:
    key: str
    root: Path
    built: bool  # True when this call built it, False when it was ready

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / ".venv" / "bin" / name


def _project_files(project_dir: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(project_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        files.extend(
            Path(dirpath) / name for name in sorted(filenames) if not name.endswith(".pyc")
        )
    return files


def _local_dependencies(project_dir: Path) -> list[Path]:
    """Directories of path dependencies recorded in the lock (their code is part of the env)."""
    lock = tomllib.loads((project_dir / "uv.lock").read_text())
    found = []
    for package in lock.get("package", []):
        source = package.get("source", {})
        for kind in ("directory", "path", "editable"):
            if kind in source and source[kind] != ".":
                found.append((project_dir / source[kind]).resolve())
    return sorted(set(found))


def environment_key(project_dir: Path, python_version: str | None = None) -> str:
    """The content key of a job project's environment (hex, 24 chars)."""
    project_dir = project_dir.resolve()
    for required in ("pyproject.toml", "uv.lock"):
        if not (project_dir / required).is_file():
            raise EnvironmentBuildError(f"job project {project_dir} has no {required}")
    digest = hashlib.sha256()
    digest.update(f"python={python_version or platform.python_version()}\n".encode())
    digest.update(f"platform={sys.platform}-{platform.machine()}\n".encode())
    for root in [project_dir, *_local_dependencies(project_dir)]:
        for path in _project_files(root):
            digest.update(f"{path.relative_to(root.parent)}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


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


class EnvironmentFabric(Block):
    """Prebuilt uv environments for jobs, shared by every run on one NAS."""

    _block_type_name = "gpuflow environment fabric"
    _block_type_slug = "gpuflow-environment-fabric"
    _description = "Content-addressed uv environments on shared storage (envs/<key>/.venv)."

    root: Path = Field(description="NAS directory holding envs/, the uv cache and uv's Pythons.")
    build_timeout_s: float = Field(default=1800.0, gt=0, description="Longest a build may take.")

    @property
    def envs_dir(self) -> Path:
        return self.root / "envs"

    @property
    def uv_cache_dir(self) -> Path:
        return self.root / "uv-cache"

    def env_dir(self, key: str) -> Path:
        return self.envs_dir / key

    def ready(self, key: str) -> bool:
        try:
            metadata = json.loads((self.env_dir(key) / METADATA).read_text())
        except (OSError, ValueError):
            return False
        return bool(metadata.get("status") == "ready")

    def resolve(self, project_dir: Path) -> ResolvedEnv:
        """The ready environment of a job project, building it first when needed."""
        key = environment_key(project_dir)
        root = self.env_dir(key)
        if self.ready(key):
            self._touch(root)
            return ResolvedEnv(key, root, built=False)
        with exclusive_lock(self.envs_dir / f"{key}.lock", self.build_timeout_s):
            if self.ready(key):
                self._touch(root)
                return ResolvedEnv(key, root, built=False)
            self._build(project_dir.resolve(), key, root)
        return ResolvedEnv(key, root, built=True)

    def _uv_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
        env.update(
            UV_CACHE_DIR=str(self.uv_cache_dir),
            UV_PYTHON_INSTALL_DIR=str(self.root / "python"),
            UV_LINK_MODE="hardlink",
            UV_NO_PROGRESS="1",
        )
        return env

    def _build(self, project_dir: Path, key: str, root: Path) -> None:
        # Whatever is there without a ready marker is the wreck of a crashed build.
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        venv = root / ".venv"
        env = self._uv_env() | {"UV_PROJECT_ENVIRONMENT": str(venv)}
        command = [
            uv.find_uv_bin(),
            "sync",
            "--frozen",
            "--no-dev",
            "--no-editable",
            "--compile-bytecode",
            "--python",
            sys.executable,
            "--project",
            str(project_dir),
        ]
        started = time.monotonic()
        try:
            completed = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.build_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise EnvironmentBuildError(
                f"building the environment of {project_dir} took over {self.build_timeout_s:.0f}s"
            ) from exc
        if completed.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise EnvironmentBuildError(
                f"uv could not build the environment of {project_dir} (key {key})",
                completed.stderr.strip(),
            )
        for name in ("pyproject.toml", "uv.lock"):
            shutil.copy2(project_dir / name, root / name)
        metadata: dict[str, Any] = {
            "key": key,
            "status": "ready",
            "project": str(project_dir),
            "python": platform.python_version(),
            "packages": self._packages(venv),
            "size_bytes": sum(p.stat().st_size for p in venv.rglob("*") if p.is_file()),
            "build_seconds": round(time.monotonic() - started, 3),
            "hardlink_fallback": _HARDLINK_FALLBACK in completed.stderr,
            "builder": f"{socket.gethostname()}:{os.getpid()}",
            "created": datetime.now(UTC).isoformat(),
        }
        partial = root / f".{METADATA}.partial"
        partial.write_text(json.dumps(metadata, indent=2))
        partial.replace(root / METADATA)

    def _packages(self, venv: Path) -> dict[str, str]:
        completed = subprocess.run(
            [uv.find_uv_bin(), "pip", "list", "--format", "json", "--python", str(venv)],
            env=self._uv_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return {item["name"]: item["version"] for item in json.loads(completed.stdout)}

    def _touch(self, root: Path) -> None:
        # metadata.json's mtime is the env's last use, for eviction by a later GC.
        os.utime(root / METADATA)
