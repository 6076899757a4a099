"""Object URIs: ``scheme://bucket/key`` (``file:///path`` has no bucket).

The URI's scheme names the kind of store that serves it (``gpuflow.storage.stores``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from gpuflow.core.errors import UriError


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
    # What a download or upload moved over the network: less than ``size`` when it resumed
    # a killed transfer; None for a listing or a stat, which move no object bytes.
    bytes_moved: int | None = None


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
