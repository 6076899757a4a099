"""Object stores: where inputs come from and results go.

``ObjectStore`` is the interface every store implements (the ``file://`` store here;
S3 and S3-compatible stores plug in beside it). URIs name the store by their scheme:
``file:///srv/store/inputs/cat.png``, ``s3://bucket/key``. Transfers publish
atomically: a destination file appears only when it is complete.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import quote, unquote, urlsplit

from prefect.blocks.core import Block
from pydantic import Field

from gpuflow.errors import ObjectNotFoundError, StoreError, UriError

_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ObjectUri:
    """A parsed object URI: ``scheme://bucket/key`` (``file://`` has no bucket)."""

    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> ObjectUri:
        parts = urlsplit(uri)
        if not parts.scheme:
            raise UriError(uri, "it has no scheme (expected e.g. file:///path or s3://bucket/key)")
        if parts.query or parts.fragment:
            raise UriError(uri, "query strings and fragments are not part of an object URI")
        scheme = parts.scheme.lower()
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise UriError(uri, f"file URIs name no host (got {parts.netloc!r})")
            path = unquote(parts.path)
            if not path.startswith("/"):
                raise UriError(uri, "file URIs need an absolute path")
            return cls(scheme, "", path)
        if not parts.netloc:
            raise UriError(uri, "it names no bucket")
        return cls(scheme, parts.netloc, unquote(parts.path.lstrip("/")))

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{quote(self.key)}"
        return f"{self.scheme}://{self.bucket}/{quote(self.key)}"

    def join(self, *parts: str) -> ObjectUri:
        key = str(PurePosixPath(self.key, *parts)) if self.key else "/".join(parts)
        return ObjectUri(self.scheme, self.bucket, key)

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str | None = None
    sha256: str | None = None  # when the store publishes one (an https source's index)


def safe_relative_path(relative_key: str, uri: str) -> PurePosixPath:
    """``relative_key`` as a path that stays inside whatever directory it is joined to.

    Object keys are arbitrary strings: ``../../etc/passwd`` or ``/etc/passwd`` are valid
    keys, so a key is refused (naming its URI) unless every segment is a plain name.
    """
    segments = relative_key.split("/")
    if (
        not relative_key
        or relative_key.startswith("/")
        or "\\" in relative_key
        or "\x00" in relative_key
        or any(segment in ("", ".", "..") for segment in segments)
    ):
        raise UriError(uri, "its key would write outside the destination directory")
    return PurePosixPath(*segments)


class ObjectStore(Block, ABC):
    """The interface every object store implements."""

    _block_schema_capabilities: ClassVar[list[str]] = ["object-store"]
    schemes: ClassVar[tuple[str, ...]]

    def check_uri(self, uri: str) -> ObjectUri:
        parsed = ObjectUri.parse(uri)
        if parsed.scheme not in self.schemes:
            raise UriError(
                uri,
                f"{type(self).__name__} serves {', '.join(self.schemes)} URIs, not {parsed.scheme}",
            )
        return parsed

    @abstractmethod
    def stat(self, uri: str) -> ObjectInfo:
        """Size of one object; ``ObjectNotFoundError`` naming the URI when it is absent."""

    @abstractmethod
    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        """Every object under a prefix, recursively, in key order."""

    @abstractmethod
    def download(self, uri: str, destination: Path) -> ObjectInfo:
        """Copy one object to ``destination``, which appears only once complete."""

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
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_atomically(source: Path, destination: Path) -> int:
    """Copy a file so that ``destination`` is either absent or complete; returns the size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    try:
        with source.open("rb") as reader, partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer, _CHUNK)
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
        return ObjectInfo(uri, size)

    def upload(self, source: Path, uri: str) -> ObjectInfo:
        destination = self._path(uri)
        try:
            size = copy_atomically(source, destination)
        except OSError as exc:
            raise StoreError(f"uploading {source} to {uri} failed: {exc}") from exc
        return ObjectInfo(uri, size)
