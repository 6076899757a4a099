"""The content key of a job's environment, and a stat index that avoids rehashing.

The key hashes everything that determines the environment: the build recipe, the
Python version, the platform, and every file of the job project and of the path
dependencies its lock names (their code is installed into the env). Hashing reads
every byte, so a warm resolve instead compares ``stat`` results of those files to
the ones recorded when the key was last computed (git's index trick). A file
modified within the timestamp granularity of the recording could hide behind an
unchanged ``mtime``, so a fingerprint is only recorded once every file is older
than ``_RACY_WINDOW_NS`` (git calls these "racily clean" entries).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gpuflow.core.errors import EnvironmentBuildError

# Bump when the way environments are built changes: every key changes with it.
BUILD_RECIPE = "uv-sync-frozen-no-dev-no-editable+shared-bytecode/2"
_SKIPPED_DIRS = frozenset(
    {".venv", "__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)
_RACY_WINDOW_NS = 2_000_000_000

FileStat = tuple[str, int, int, int, int]  # path, size, mtime_ns, ctime_ns, inode


def platform_tag() -> str:
    return f"{sys.platform}-{platform.machine()}"


def project_files(root: Path) -> list[Path]:
    """The files of a project that count for its key (not venvs, caches or bytecode)."""
    if root.is_file():  # a path dependency on a wheel or sdist file
        return [root]
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        files.extend(
            Path(dirpath) / name for name in sorted(filenames) if not name.endswith(".pyc")
        )
    return files


_LOCAL_SOURCES = ("directory", "path", "editable", "virtual")


def _read_lock(project_dir: Path) -> dict[str, Any]:
    lock_path = project_dir / "uv.lock"
    try:
        return tomllib.loads(lock_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise EnvironmentBuildError(f"the lock file {lock_path} is not valid TOML: {exc}") from None


def local_dependencies(project_dir: Path) -> list[Path]:
    """Directories and files of the path dependencies recorded in the job's lock."""
    found = set()
    for package in _read_lock(project_dir).get("package", []):
        source = package.get("source", {})
        for kind in _LOCAL_SOURCES:
            if kind in source and source[kind] != ".":
                found.add((project_dir / source[kind]).resolve())
    return sorted(found)


def local_package_names(project_dir: Path) -> list[str]:
    """The packages the lock builds from local sources: the project and its path deps."""
    names = {
        str(package["name"])
        for package in _read_lock(project_dir).get("package", [])
        if "name" in package and any(k in package.get("source", {}) for k in _LOCAL_SOURCES)
    }
    return sorted(names)


def source_roots(project_dir: Path) -> list[Path]:
    for required in ("pyproject.toml", "uv.lock"):
        if not (project_dir / required).is_file():
            raise EnvironmentBuildError(f"job project {project_dir} has no {required}")
    return [project_dir, *local_dependencies(project_dir)]


def content_key(project_dir: Path, python_version: str, roots: list[Path]) -> str:
    """Hash the recipe, Python, platform and every source file (hex, 24 chars)."""
    digest = hashlib.sha256()
    digest.update(f"recipe={BUILD_RECIPE}\n".encode())
    digest.update(f"python={python_version}\n".encode())
    digest.update(f"platform={platform_tag()}\n".encode())
    for root in roots:
        for path in project_files(root):
            digest.update(f"{path.relative_to(root.parent)}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


def environment_key(project_dir: Path, python_version: str | None = None) -> str:
    """The content key of a job project's environment, hashing every file (slow path)."""
    project_dir = project_dir.resolve()
    return content_key(
        project_dir, python_version or platform.python_version(), source_roots(project_dir)
    )


class SourceFingerprint(BaseModel):
    """``stat`` results of every file a key was computed from, and that key."""

    model_config = ConfigDict(frozen=True)

    key: str
    roots: list[str]
    files: list[FileStat]


def _stat_files(roots: list[Path]) -> list[FileStat]:
    stats: list[FileStat] = []
    for root in roots:
        if root.is_file():
            st = root.stat()
            stats.append((str(root), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
            continue
        pending = [str(root)]
        while pending:
            directory = pending.pop()
            with os.scandir(directory) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name not in _SKIPPED_DIRS:
                            pending.append(entry.path)
                    elif not entry.name.endswith(".pyc"):
                        st = entry.stat()
                        stats.append(
                            (entry.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                        )
    return stats


class StatIndex:
    """Remembers, per project path, the key and the ``stat`` results it came from.

    Entries live in one small JSON file per (project path, Python) under
    ``directory`` on the NAS, so every process on a host with the same checkout
    gets the warm path, not only the one that hashed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _entry(self, project_dir: Path, python_version: str) -> Path:
        ident = f"{project_dir}\0{python_version}\0{platform_tag()}\0{BUILD_RECIPE}"
        return self.directory / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"

    def lookup(self, project_dir: Path, python_version: str) -> str | None:
        """The recorded key when no file of the project changed since; else None."""
        try:
            raw = self._entry(project_dir, python_version).read_bytes()
            recorded = SourceFingerprint.model_validate_json(raw)
            current = _stat_files([Path(root) for root in recorded.roots])
        except (OSError, ValidationError):
            return None
        return recorded.key if current == recorded.files else None

    def compute(self, project_dir: Path, python_version: str) -> str:
        """Hash the project (slow path) and record the fingerprint when it is safe to."""
        roots = source_roots(project_dir)
        before = _stat_files(roots)
        key = content_key(project_dir, python_version, roots)
        after = _stat_files(roots)
        newest = max((stat[2] for stat in after), default=0)
        # Only trust stats that cannot hide a change: stable across the hash, and old
        # enough that a later write in the same timestamp tick is impossible.
        if before == after and time.time_ns() - newest > _RACY_WINDOW_NS:
            fingerprint = SourceFingerprint(key=key, roots=[str(r) for r in roots], files=after)
            entry = self._entry(project_dir, python_version)
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.with_name(f".{entry.name}.{os.getpid()}.partial")
            partial.write_text(fingerprint.model_dump_json())
            partial.replace(entry)
        return key
