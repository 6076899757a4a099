"""The ``file://`` store: the embedded default's object store, a directory on this host."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from gpuflow.core.errors import ObjectNotFoundError, StoreError, UriError
from gpuflow.storage.base import CHUNK, ObjectStore
from gpuflow.storage.uri import ObjectInfo, ObjectUri


def copy_atomically(source: Path, destination: Path) -> int:
    """Copy a file so that ``destination`` is either absent or complete; returns the size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    try:
        with source.open("rb") as reader, partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
            writer.flush()
            os.fsync(writer.fileno())
        partial.replace(destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return destination.stat().st_size


class LocalObjectStore(ObjectStore):
    """``file://`` URIs: the embedded default's object store, a directory on this machine.

    ``root`` confines the store: URIs outside it are refused, so a request cannot
    read or overwrite arbitrary files of the host.
    """

    _block_type_name = "gpuflow local object store"
    _block_type_slug = "gpuflow-local-object-store"
    _description = "file:// object store confined to one directory (the embedded default)."
    schemes: ClassVar[tuple[str, ...]] = ("file",)

    root: Path = Field(description="Directory that holds every object of this store.")

    def uri_for(self, key: str) -> str:
        return str(ObjectUri("file", "", str(self._path_for_key(key))))

    def _path_for_key(self, key: str) -> Path:
        root = self.root.resolve()
        path = (root / key.lstrip("/")).resolve()
        if not path.is_relative_to(root):
            raise UriError(key, f"it escapes the store root {root}")
        return path

    def _path(self, uri: str) -> Path:
        parsed = self.check_uri(uri)
        root = self.root.resolve()
        path = Path(os.path.normpath(parsed.key))
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise UriError(uri, f"it is outside the store root {root}")
        return resolved

    def stat(self, uri: str) -> ObjectInfo:
        path = self._path(uri)
        if not path.is_file():
            raise ObjectNotFoundError(uri)
        return ObjectInfo(uri, path.stat().st_size)

    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        prefix = self._path(prefix_uri)
        if not prefix.is_dir():
            raise ObjectNotFoundError(prefix_uri, "no objects under this prefix")
        for path in sorted(p for p in prefix.rglob("*") if p.is_file()):
            yield ObjectInfo(str(ObjectUri("file", "", str(path))), path.stat().st_size)

    def download(self, uri: str, destination: Path) -> ObjectInfo:
        source = self._path(uri)
        if not source.is_file():
            raise ObjectNotFoundError(uri)
        try:
            size = copy_atomically(source, destination)
        except OSError as exc:
            raise StoreError(f"downloading {uri} to {destination} failed: {exc}") from exc
        return ObjectInfo(uri, size, bytes_moved=size)

    def upload(self, source: Path, uri: str) -> ObjectInfo:
        destination = self._path(uri)
        try:
            size = copy_atomically(source, destination)
        except OSError as exc:
            raise StoreError(f"uploading {source} to {uri} failed: {exc}") from exc
        return ObjectInfo(uri, size, bytes_moved=size)
