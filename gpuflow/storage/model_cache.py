"""The model cache on the NAS: ``models/<name>/<revision>/``, filled once, verified, shared.

Filling is single-flight across processes and hosts that share the NAS: an
exclusive ``flock`` on ``models/<name>/.<revision>.lock`` (released by the kernel
when its holder dies, so a killed download never blocks the next one; the lock
file names its holder for whoever waits). A model is downloaded into
``.<revision>.partial/`` and renamed into place with its manifest, so a
half-downloaded model never looks ready; a killed fill resumes there (finished
files are kept, unfinished ones resume from their transfer journal).

Checking a cached model is cheap: each file's size and mtime are compared with the
manifest, and only a file whose stat changed is hashed again. A truncated or
corrupted file is re-fetched alone. Runs hold ``.<revision>.inuse`` with a shared
lock while they use a model, and every use touches the manifest, so
``evict_least_recently_used`` removes the oldest models and never one in use.

The cache's own files all start with a dot and a revision never does, so no revision
name (``v1.lock``, ``v1.partial``) can be taken for another revision's file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field

from gpuflow.core.errors import IntegrityError, ModelCacheError, ObjectNotFoundError
from gpuflow.core.locks import LockTimeoutError, exclusive_lock, exclusive_lock_if_free
from gpuflow.core.request import ModelRef
from gpuflow.storage.base import ObjectStore
from gpuflow.storage.transfer import file_digest
from gpuflow.storage.uri import ObjectInfo, ObjectUri

MANIFEST = "gpuflow-manifest.json"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedModel:
    path: Path
    downloaded: bool
    bytes_downloaded: int


@dataclass(frozen=True)
class _Check:
    """What a look at a cached model found."""

    manifest: dict[str, Any] | None
    broken: list[str]  # files missing, truncated or whose bytes differ from the manifest
    drifted: list[str]  # files whose stat changed but whose bytes still match

    @property
    def ready(self) -> bool:
        return self.manifest is not None and not self.broken


class ModelCache(Block):
    """Models shared by every run on one NAS."""

    _block_type_name = "gpuflow model cache"
    _block_type_slug = "gpuflow-model-cache"
    _description = "Model cache on shared storage: models/<name>/<revision>/, single-flight fills."

    root: Path = Field(description="NAS directory holding models/<name>/<revision>/.")
    lock_timeout_s: float = Field(
        default=3600.0, gt=0, description="How long to wait for another run's download."
    )
    verification: Literal["stat", "checksum"] = Field(
        default="stat",
        description="stat: hash again only files whose size or mtime changed; "
        "checksum: hash every file on every use.",
    )

    def model_dir(self, model: ModelRef) -> Path:
        return self.root / model.name / model.revision

    def ensure(self, model: ModelRef, store: ObjectStore, source_uri: str) -> CachedModel:
        """The verified local copy of ``model``, downloading it from ``source_uri`` if needed.

        Hold ``hold(model)`` around this call and the use of the model, so that a
        garbage collection cannot remove it in between.
        """
        final = self.model_dir(model)
        check = self._check(final)
        if check.ready and not check.drifted:
            self._touch(final)
            return CachedModel(final, downloaded=False, bytes_downloaded=0)
        if check.manifest is None:
            self.require_source(store, source_uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._fill_lock(model):
            # Another process may have filled it while we waited for the lock.
            check = self._check(final)
            if check.ready and not check.drifted:
                self._touch(final)
                return CachedModel(final, downloaded=False, bytes_downloaded=0)
            manifest = check.manifest
            if manifest is not None and manifest.get("source") == source_uri:
                size = self._repair(final, manifest, check, store, source_uri)
            else:
                size = self._fill(final, model, store, source_uri)
        self._touch(final)
        return CachedModel(final, downloaded=size > 0, bytes_downloaded=size)

    def require_source(self, store: ObjectStore, source_uri: str) -> None:
        """Refuse a missing or empty source (a model name with a typo) before anything is
        made for it: no directory, no lock, no in-use marker."""
        if not any(True for _ in store.list(source_uri)):
            raise ObjectNotFoundError(source_uri, "no model files under this prefix")

    def is_ready(self, model: ModelRef) -> bool:
        return self.verify(self.model_dir(model))

    def verify(self, model_dir: Path) -> bool:
        """True when every file of the manifest is present with its size and checksum."""
        return self._check(model_dir).ready

    @contextlib.contextmanager
    def hold(self, model: ModelRef) -> Iterator[None]:
        """Mark ``model`` in use for the ``with`` block (a shared lock: many runs at once)."""
        marker = self._in_use_marker(model)
        marker.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock; so does the kernel if we die

    def evict_least_recently_used(self, max_bytes: int) -> list[Path]:
        """Remove the least recently used models until the cache holds ``max_bytes`` or less.

        A model in use (``hold``) or being filled is skipped, whatever its age.
        """
        models = []
        for manifest_path in self.root.glob(f"*/*/{MANIFEST}"):
            if manifest_path.parent.name.startswith(
                "."
            ) or manifest_path.parent.parent.name.startswith("."):
                continue  # a fill in progress, or one being evicted: not a model yet
            try:
                manifest = json.loads(manifest_path.read_text())
                size = sum(int(entry["size"]) for entry in manifest["files"])
                models.append((manifest_path.stat().st_mtime, size, manifest_path.parent))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        total = sum(size for _, size, _ in models)
        evicted: list[Path] = []
        for _, size, model_dir in sorted(models):
            if total <= max_bytes:
                break
            model = ModelRef(name=model_dir.parent.name, revision=model_dir.name)
            if self._remove_if_unused(model):
                evicted.append(model_dir)
                total -= size
        return evicted

    def _remove_if_unused(self, model: ModelRef) -> bool:
        final = self.model_dir(model)
        try:
            with self._fill_lock(model, timeout_s=0.0), self._exclusive_in_use(model):
                doomed = final.with_name(f".{final.name}.evicting-{os.getpid()}")
                final.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                return True
        except (ModelCacheError, BlockingIOError):
            return False

    @contextlib.contextmanager
    def _exclusive_in_use(self, model: ModelRef) -> Iterator[None]:
        fd = os.open(self._in_use_marker(model), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: in use
            yield
        finally:
            os.close(fd)

    def _check(self, model_dir: Path) -> _Check:
        try:
            manifest = json.loads((model_dir / MANIFEST).read_text())
            files = manifest["files"]
            if not isinstance(files, list) or not files:
                return _Check(None, [], [])
        except (OSError, ValueError, KeyError, TypeError):
            return _Check(None, [], [])
        broken: list[str] = []
        drifted: list[str] = []
        for entry in files:
            path = model_dir / entry["path"]
            try:
                stat = path.stat()
            except OSError:
                broken.append(entry["path"])
                continue
            if stat.st_size != entry["size"]:
                broken.append(entry["path"])
            elif self.verification == "checksum" or stat.st_mtime_ns != entry.get("mtime_ns"):
                if file_digest(path, "sha256") != entry["sha256"]:
                    broken.append(entry["path"])
                elif stat.st_mtime_ns != entry.get("mtime_ns"):
                    drifted.append(entry["path"])
        return _Check(manifest, broken, drifted)

    def _repair(
        self,
        final: Path,
        manifest: dict[str, Any],
        check: _Check,
        store: ObjectStore,
        source_uri: str,
    ) -> int:
        """Re-fetch only the broken files of a published model; returns the bytes fetched."""
        prefix = ObjectUri.parse(source_uri)
        fetched = 0
        entries = {entry["path"]: entry for entry in manifest["files"]}
        for relative in check.broken:
            entry = entries[relative]
            path = final / relative
            uri = str(prefix.join(*Path(relative).parts))
            _log.warning("Re-fetching %s of %s: missing, truncated or corrupted", relative, final)
            downloaded = store.download(uri, path)
            if file_digest(path, "sha256") != entry["sha256"]:
                path.unlink(missing_ok=True)
                raise IntegrityError(
                    uri, f"it no longer matches the checksum in {final / MANIFEST}"
                )
            fetched += _bytes_moved(downloaded)
        for relative in [*check.broken, *check.drifted]:
            entries[relative]["mtime_ns"] = (final / relative).stat().st_mtime_ns
        _write_manifest(final, manifest)
        return fetched

    def _fill(self, final: Path, model: ModelRef, store: ObjectStore, source_uri: str) -> int:
        # A fixed name (only the lock holder writes here): a killed fill resumes.
        staging = final.with_name(f".{final.name}.partial")
        objects = list(store.list(source_uri))  # a missing source leaves nothing behind
        staging.mkdir(parents=True, exist_ok=True)
        plan = [(info, staging / store.relative_key(source_uri, info.uri)) for info in objects]
        fetched = 0
        files: list[dict[str, Any]] = []
        for info, local in plan:
            # Downloads publish atomically: a file present with its size is complete.
            if not (local.is_file() and local.stat().st_size == info.size):
                # A killed fill's partial file resumes: only the missing parts count.
                fetched += _bytes_moved(store.download(info.uri, local))
                # The listing's size is a promise too (an index without checksums has only
                # it): a file that came shorter or longer is never published as ready.
                received = local.stat().st_size
                if received != info.size:
                    local.unlink()
                    raise IntegrityError(
                        info.uri, f"the listing says {info.size} bytes, {received} arrived"
                    )
            files.append(_file_entry(staging, local, info))
        manifest = {
            "format": 1,
            "model": {"name": model.name, "revision": model.revision},
            "source": source_uri,
            "files": files,
            "downloaded_at": datetime.now(UTC).isoformat(),
            "downloaded_by": f"{socket.gethostname()}:{os.getpid()}",
        }
        _write_manifest(staging, manifest)
        if final.exists():
            # An unusable copy: move it aside first so the rename below is atomic.
            stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging.rename(final)
        return fetched

    def _touch(self, model_dir: Path) -> None:
        # The manifest's mtime is the model's last use, for the LRU eviction.
        with contextlib.suppress(FileNotFoundError):
            os.utime(model_dir / MANIFEST)

    def _in_use_marker(self, model: ModelRef) -> Path:
        return self.root / model.name / f".{model.revision}.inuse"

    @contextlib.contextmanager
    def _fill_lock(self, model: ModelRef, timeout_s: float | None = None) -> Iterator[None]:
        path = self.root / model.name / f".{model.revision}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock_if_free(path) as free:
            if free:
                _write_owner(path)
                yield
                return
        if timeout_s == 0.0:
            raise ModelCacheError(f"{model.name}/{model.revision} is being filled")
        _log.info("Waiting for %s/%s: %s", model.name, model.revision, _read_owner(path))
        wait_s = self.lock_timeout_s if timeout_s is None else timeout_s
        try:
            with exclusive_lock(path, wait_s):
                _write_owner(path)
                yield
        except LockTimeoutError as error:
            raise ModelCacheError(
                f"gave up after {wait_s:.0f}s waiting for {model.name}/{model.revision}, "
                f"filled by {_read_owner(path)}"
            ) from error


def _bytes_moved(downloaded: ObjectInfo) -> int:
    # A store that does not say what it moved is taken to have moved the whole object.
    return downloaded.size if downloaded.bytes_moved is None else downloaded.bytes_moved


def _file_entry(staging: Path, local: Path, info: ObjectInfo) -> dict[str, Any]:
    digest = file_digest(local, "sha256")
    if info.sha256 and digest != info.sha256:
        local.unlink(missing_ok=True)
        raise IntegrityError(info.uri, f"sha256 {digest} differs from the source's {info.sha256}")
    stat = local.stat()
    return {
        "path": local.relative_to(staging).as_posix(),
        "size": stat.st_size,
        "sha256": digest,
        "mtime_ns": stat.st_mtime_ns,
    }


def _write_manifest(model_dir: Path, manifest: dict[str, Any]) -> None:
    temporary = model_dir / f".{MANIFEST}.{os.getpid()}"
    temporary.write_text(json.dumps(manifest, indent=2))
    temporary.replace(model_dir / MANIFEST)


def _write_owner(lock_path: Path) -> None:
    # Informational only: the flock is the lock; this says who holds it to those waiting.
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": datetime.now(UTC)}
    with contextlib.suppress(OSError):
        lock_path.write_text(json.dumps(owner, default=str))


def _read_owner(lock_path: Path) -> str:
    try:
        owner = json.loads(lock_path.read_text())
        return f"held by {owner['host']}:{owner['pid']} since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "held by another process"
