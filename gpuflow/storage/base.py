"""The interface every object store implements: where inputs come from, results go.

Stores are Prefect blocks (saved with the stack, editable in the UI). Each serves the URI
schemes in ``schemes``; transfers publish atomically: a destination file appears only
when it is complete. ``gpuflow.storage.stores`` registers the store types by scheme.
"""

from __future__ import annotations

import builtins
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import ClassVar

from prefect.blocks.core import Block

from gpuflow.core.errors import StoreError, UriError
from gpuflow.storage.uri import ObjectInfo, ObjectUri, safe_relative_path

CHUNK = 4 * 1024 * 1024


class ObjectStore(Block, ABC):
    """The interface every object store implements."""

    _block_schema_capabilities: ClassVar[list[str]] = ["object-store"]
    schemes: ClassVar[tuple[str, ...]]

    # Whether results can be uploaded to it (an https source is read-only).
    writable: ClassVar[bool] = True

    @classmethod
    def for_scheme(cls, scheme: str) -> ObjectStore | None:
        """A store of this type for ``scheme`` URIs that needs no settings, if there is one
        (so an input from such a URI works with any stack)."""
        return None

    @property
    def served_schemes(self) -> tuple[str, ...]:
        """The schemes this store (with its settings) serves."""
        return self.schemes

    def serves(self, uri: str) -> bool:
        return ObjectUri.parse(uri).scheme in self.served_schemes

    def check_uri(self, uri: str) -> ObjectUri:
        parsed = ObjectUri.parse(uri)
        if parsed.scheme not in self.served_schemes:
            served = ", ".join(f"{scheme}://" for scheme in self.served_schemes)
            raise UriError(uri, f"this {type(self).__name__} serves {served} URIs")
        return parsed

    @abstractmethod
    def stat(self, uri: str) -> ObjectInfo:
        """Size of one object; ``ObjectNotFoundError`` naming the URI when it is absent."""

    @abstractmethod
    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """Every object under a prefix, recursively, in key order."""

    def share_url(self, uri: str, expires_s: int) -> str | None:
        """An https URL that fetches the object for ``expires_s`` seconds without the store's
        credentials (a signature in its query, never the secret), or None where the store
        has none: a browser refuses ``file://`` links from an http page."""
        return None

    @abstractmethod
    def download(self, uri: str, destination: Path) -> ObjectInfo:
        """Copy one object to ``destination``, which appears only once complete; the
        answer's ``bytes_moved`` is what this call fetched (less after a resume)."""

    @abstractmethod
    def upload(self, source: Path, uri: str) -> ObjectInfo:
        """Copy a local file to ``uri``, which appears only once complete."""

    def download_prefix(
        self, prefix_uri: str, destination: Path, concurrency: int = 8
    ) -> builtins.list[ObjectInfo]:
        """Copy every object under ``prefix_uri`` into ``destination``, keeping relative keys.

        Every key is checked before anything is written: one that would land outside
        ``destination`` fails the whole call, naming its URI.
        """
        objects = list(self.list(prefix_uri))
        targets = [destination / self.relative_key(prefix_uri, info.uri) for info in objects]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(self.download, [info.uri for info in objects], targets))

    def upload_prefix(
        self, source: Path, prefix_uri: str, concurrency: int = 8
    ) -> builtins.list[ObjectInfo]:
        """Copy every file under the directory ``source`` to ``prefix_uri``/<relative path>."""
        if not source.is_dir():
            raise StoreError(f"{source} is not a directory")
        prefix = self.check_uri(prefix_uri)
        files = sorted(path for path in source.rglob("*") if path.is_file())
        uris = [str(prefix.join(*path.relative_to(source).parts)) for path in files]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(self.upload, files, uris))

    def relative_key(self, prefix_uri: str, uri: str) -> PurePosixPath:
        """The key of ``uri`` below ``prefix_uri``, refused if it could escape a directory."""
        prefix = ObjectUri.parse(prefix_uri).key.rstrip("/")
        key = ObjectUri.parse(uri).key
        if prefix and not key.startswith(prefix + "/"):
            raise UriError(uri, f"it is not under the prefix {prefix_uri}")
        return safe_relative_path(key[len(prefix) + 1 :] if prefix else key, uri)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
