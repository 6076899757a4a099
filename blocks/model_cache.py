"""The model cache on the NAS: ``models/<name>/<revision>/``, filled once, verified, shared.

Filling is single-flight across processes and hosts that share the NAS: an
exclusive ``flock`` on ``models/<name>/<revision>.lock`` (released by the kernel
when its holder dies, so a killed download never blocks the next one). A model
is downloaded into a temporary sibling directory and renamed into place with its
manifest, so a half-downloaded model never looks ready.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from blocks.object_store import ObjectStore, ObjectUri, sha256_file
from gpuflow.errors import ModelCacheError, ObjectNotFoundError
from gpuflow.locks import exclusive_lock
from gpuflow.request import ModelRef

MANIFEST = "gpuflow-manifest.json"


@dataclass(frozen=True)
class CachedModel:
    path: Path
    downloaded: bool
    bytes_downloaded: int


class ModelCache(Block):
    """Models shared by every run on one NAS."""

    _block_type_name = "gpuflow model cache"
    _block_type_slug = "gpuflow-model-cache"
    _description = "Model cache on shared storage: models/<name>/<revision>/, single-flight fills."

    root: Path = Field(description="NAS directory holding models/<name>/<revision>/.")
    lock_timeout_s: float = Field(
        default=3600.0, gt=0, description="How long to wait for another run's download."
    )

    def model_dir(self, model: ModelRef) -> Path:
        return self.root / model.name / model.revision

    def ensure(self, model: ModelRef, store: ObjectStore, source_uri: str) -> CachedModel:
        """The verified local copy of ``model``, downloading it from ``source_uri`` if needed."""
        final = self.model_dir(model)
        if self.verify(final):
            self._touch(final)
            return CachedModel(final, downloaded=False, bytes_downloaded=0)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(final):
            # Another process may have filled it while we waited for the lock.
            if self.verify(final):
                self._touch(final)
                return CachedModel(final, downloaded=False, bytes_downloaded=0)
            size = self._fill(final, store, source_uri)
        self._touch(final)
        return CachedModel(final, downloaded=True, bytes_downloaded=size)

    def verify(self, model_dir: Path) -> bool:
        """True when every file of the manifest is present with its size and checksum."""
        try:
            manifest = json.loads((model_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        files = manifest.get("files")
        if not isinstance(files, list) or not files:
            return False
        for entry in files:
            path = model_dir / entry["path"]
            try:
                if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                    return False
            except OSError:
                return False
        return True

    def _fill(self, final: Path, store: ObjectStore, source_uri: str) -> int:
        prefix = ObjectUri.parse(source_uri)
        staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        files: list[dict[str, Any]] = []
        try:
            objects = list(store.list(source_uri))
            if not objects:
                raise ObjectNotFoundError(source_uri, "the model source holds no files")
            for info in objects:
                relative = PurePosixPath(ObjectUri.parse(info.uri).key).relative_to(
                    PurePosixPath(prefix.key)
                )
                if ".." in relative.parts:
                    raise ModelCacheError(f"model object {info.uri} escapes {source_uri}")
                local = staging / relative
                store.download(info.uri, local)
                files.append(
                    {
                        "path": str(relative),
                        "size": local.stat().st_size,
                        "sha256": sha256_file(local),
                    }
                )
            manifest = {
                "source": source_uri,
                "files": files,
                "downloaded_at": datetime.now(UTC).isoformat(),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if final.exists():
                # A corrupted copy: move it aside first so the rename below is atomic.
                stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
                final.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return sum(int(entry["size"]) for entry in files)

    def _touch(self, model_dir: Path) -> None:
        # The manifest's mtime is the model's last use, for an LRU eviction.
        os.utime(model_dir / MANIFEST)

    def _lock(self, final: Path) -> AbstractContextManager[None]:
        return exclusive_lock(final.with_name(f"{final.name}.lock"), self.lock_timeout_s)
