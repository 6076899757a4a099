"""Read-only ``https://`` (and ``http://``) sources for public model files.

Files download with the same parallel, resumable, ranged machinery as S3, pinned to
the file's ETag (``If-Range``: a changed file answers 200 instead of 206 and the
download stops rather than mixing versions). HTTP has no listing, so a prefix is
listed through an index file beside the files: the model cache's own manifest
format (``{"files": [{"path", "size", "sha256"}]}``), so a model directory of one
cache published by any web server is a source for another.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import urllib3
from pydantic import Field, PrivateAttr, SecretStr

from blocks.object_store import ObjectInfo, ObjectStore, safe_relative_path
from blocks.transfer import Part, TransferSettings, download_ranges, plan_parts
from gpuflow.errors import (
    GpuflowError,
    IntegrityError,
    ObjectNotFoundError,
    StoreAccessError,
    StoreError,
)


class HttpSource(ObjectStore):
    """Files on a web server (a model hub, nginx, a CDN), read with parallel ranges."""

    _block_type_name = "gpuflow http source"
    _block_type_slug = "gpuflow-http-source"
    _description = "Read-only https:// source of model files: parallel, resumable ranged GETs."
    schemes: ClassVar[tuple[str, ...]] = ("https", "http")

    bearer_token: SecretStr | None = Field(
        default=None, description="Sent as 'Authorization: Bearer …' (e.g. a hub token)."
    )
    index_name: str = Field(
        default="gpuflow-manifest.json",
        description="File under a prefix that lists its files (HTTP has no listing).",
    )
    verify_tls: bool = True
    timeout_s: float = Field(default=60.0, gt=0, description="Connect and read timeout.")
    transfer: TransferSettings = Field(default_factory=TransferSettings)

    _pool: urllib3.PoolManager | None = PrivateAttr(default=None)
    _pool_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def pool(self) -> urllib3.PoolManager:
        with self._pool_lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(
                    maxsize=self.transfer.max_concurrency * 2,
                    cert_reqs="CERT_REQUIRED" if self.verify_tls else "CERT_NONE",
                    timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
                    retries=urllib3.Retry(total=3, backoff_factor=0.5, redirect=5),
                )
            return self._pool

    def stat(self, uri: str) -> ObjectInfo:
        response = self._request(uri, "HEAD")
        length = response.headers.get("Content-Length")
        if length is None:
            raise StoreError(f"{uri}: the server sent no Content-Length")
        return ObjectInfo(uri, int(length), etag=response.headers.get("ETag"))

    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        prefix = self.check_uri(prefix_uri)
        index_uri = str(prefix.join(self.index_name))
        try:
            response = self._request(index_uri, "GET")
        except ObjectNotFoundError:
            raise ObjectNotFoundError(
                prefix_uri, f"no {self.index_name} under this prefix (https sources list by it)"
            ) from None
        try:
            files = json.loads(response.data)["files"]
            entries = [
                (str(entry["path"]), int(entry["size"]), entry.get("sha256")) for entry in files
            ]
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(f"{index_uri}: not a file index ({error!r})") from None
        if not entries:
            raise ObjectNotFoundError(prefix_uri, "its index lists no files")
        for path, size, sha256 in sorted(entries):
            relative = safe_relative_path(path, f"{index_uri} entry {path}")
            yield ObjectInfo(str(prefix.join(*relative.parts)), size, sha256=sha256)

    def download(self, uri: str, destination: Path) -> ObjectInfo:
        head = self._request(uri, "HEAD")
        if "Content-Length" not in head.headers:
            raise StoreError(f"{uri}: the server sent no Content-Length")
        size = int(head.headers["Content-Length"])
        validator = head.headers.get("ETag") or head.headers.get("Last-Modified") or ""
        ranged = head.headers.get("Accept-Ranges", "").lower() == "bytes" and bool(validator)
        settings = self.transfer
        parts = plan_parts(size, settings) if ranged else [Part(1, 0, size)]

        def stream(part: Part, whole: bool) -> Iterator[bytes]:
            headers = {} if whole else {"Range": f"bytes={part.offset}-{part.end}"}
            if not whole:
                headers["If-Range"] = validator
            response = self._request(uri, "GET", headers, stream=True)
            try:
                if not whole and response.status != 206:
                    raise IntegrityError(uri, "the file changed during the download")
                yield from response.stream(settings.chunk_size)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                raise StoreError(f"{uri}: connection lost mid-part: {error}") from None
            finally:
                response.release_conn()

        result = download_ranges(
            uri,
            destination,
            size=size,
            version=validator,
            parts=parts,
            stream=stream,
            settings=settings,
        )
        return ObjectInfo(uri, result.size, etag=head.headers.get("ETag"))

    def upload(self, source: Path, uri: str) -> ObjectInfo:
        raise StoreAccessError(uri, "https sources are read-only")

    def upload_prefix(
        self, source: Path, prefix_uri: str, concurrency: int = 8
    ) -> builtins.list[ObjectInfo]:
        raise StoreAccessError(prefix_uri, "https sources are read-only")

    def _request(
        self, uri: str, method: str, headers: dict[str, str] | None = None, stream: bool = False
    ) -> Any:
        parsed = self.check_uri(uri)
        url = f"{parsed.scheme}://{parsed.bucket}/{quote(parsed.key)}"
        all_headers = dict(headers or {})
        if self.bearer_token is not None:
            all_headers["Authorization"] = f"Bearer {self.bearer_token.get_secret_value()}"
        try:
            response = self.pool.request(
                method, url, headers=all_headers, preload_content=not stream, redirect=True
            )
        except urllib3.exceptions.HTTPError as error:
            raise StoreError(f"{uri}: request failed: {type(error).__name__}") from None
        if response.status < 400:
            return response
        response.drain_conn()
        response.release_conn()
        raise _status_error(uri, response.status)


def _status_error(uri: str, status: int) -> GpuflowError:
    if status == 404:
        return ObjectNotFoundError(uri)
    if status in (401, 403):
        return StoreAccessError(uri, f"access denied (HTTP {status}): check the bearer token")
    if status == 416:
        return IntegrityError(uri, "the server refused the byte range (the file shrank?)")
    return StoreError(f"{uri}: the server answered HTTP {status}")
