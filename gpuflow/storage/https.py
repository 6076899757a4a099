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
import contextlib
import http.client
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

import urllib3
from pydantic import Field, PrivateAttr, SecretStr

from gpuflow.core.errors import (
    GpuflowError,
    IntegrityError,
    ObjectNotFoundError,
    StoreAccessError,
    StoreError,
)
from gpuflow.storage.base import ObjectStore
from gpuflow.storage.transfer import (
    MiB,
    Part,
    PartReader,
    TransferSettings,
    download_ranges,
    plan_parts,
)
from gpuflow.storage.uri import ObjectInfo, safe_relative_path

HTTP_CHUNK_SIZE = 4 * MiB


class HttpSource(ObjectStore):
    """Files on a web server (a model hub, nginx, a CDN), read with parallel ranges."""

    _block_type_name = "gpuflow http source"
    _block_type_slug = "gpuflow-http-source"
    _description = "Read-only https:// source of model files: parallel, resumable ranged GETs."
    schemes: ClassVar[tuple[str, ...]] = ("https", "http")
    writable: ClassVar[bool] = False

    bearer_token: SecretStr | None = Field(
        default=None, description="Sent as 'Authorization: Bearer …' (e.g. a hub token)."
    )
    index_name: str = Field(
        default="gpuflow-manifest.json",
        description="File under a prefix that lists its files (HTTP has no listing).",
    )
    verify_tls: bool = True
    allow_private_redirects: bool = Field(
        default=False,
        description=(
            "Follow redirects to another host at a loopback, link-local (the cloud metadata "
            "address) or private address, as an on-premises mirror may need. Off: such a "
            "redirect is refused."
        ),
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Connect and read timeout.")
    # Reads of HTTP_CHUNK_SIZE: each read from http.client's socket costs a syscall and a
    # GIL hand-over between the workers whatever its size (measured in docs/storage.md).
    transfer: TransferSettings = Field(
        default_factory=lambda: TransferSettings(chunk_size=HTTP_CHUNK_SIZE)
    )

    _pool: urllib3.PoolManager | None = PrivateAttr(default=None)
    _connections: _ThreadConnections = PrivateAttr(default_factory=lambda: _ThreadConnections())
    _pool_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def for_scheme(cls, scheme: str) -> HttpSource | None:
        # A public file needs no token: any stack can read an https:// input.
        return cls() if scheme in cls.schemes else None

    @property
    def pool(self) -> urllib3.PoolManager:
        with self._pool_lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(
                    maxsize=self.transfer.max_concurrency * 2,
                    cert_reqs="CERT_REQUIRED" if self.verify_tls else "CERT_NONE",
                    timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
                    # Redirects are followed by _request, which checks each hop.
                    retries=urllib3.Retry(total=3, backoff_factor=0.5, redirect=False),
                )
            return self._pool

    def stat(self, uri: str) -> ObjectInfo:
        response, _ = self._request(uri, "HEAD")
        return ObjectInfo(uri, _content_length(uri, response), etag=response.headers.get("ETag"))

    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        prefix = self.check_uri(prefix_uri)
        index_uri = str(prefix.join(self.index_name))
        try:
            response, _ = self._request(index_uri, "GET")
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
        head, location = self._request(uri, "HEAD")
        size = _content_length(uri, head)
        validator = head.headers.get("ETag") or head.headers.get("Last-Modified") or ""
        ranged = head.headers.get("Accept-Ranges", "").lower() == "bytes" and bool(validator)
        settings = self.transfer
        parts = plan_parts(size, settings) if ranged else [Part(1, 0, size)]

        # Ranges go to where the HEAD was redirected (a hub sends files to its CDN), with
        # the token only where the HEAD itself could carry it.
        auth = self._auth_headers(uri, location)

        @contextlib.contextmanager
        def stream(part: Part, whole: bool) -> Iterator[PartReader]:
            headers = {"Accept-Encoding": "identity", **auth}
            if not whole:
                headers["Range"] = f"bytes={part.offset}-{part.end}"
                headers["If-Range"] = validator
            connection, response = self._connections.get(location, headers, self)
            try:
                if response.status >= 400:
                    raise _status_error(uri, response.status)
                if response.status != (200 if whole else 206):
                    raise IntegrityError(uri, "the file changed during the download")
                yield _SocketReader(uri, response)
            finally:
                if not response.isclosed():
                    connection.close()  # not read to the end: unusable for the next request

        result = download_ranges(
            uri,
            destination,
            size=size,
            version=validator,
            parts=parts,
            stream=stream,
            settings=settings,
        )
        return ObjectInfo(
            uri, result.size, etag=head.headers.get("ETag"), bytes_moved=result.bytes_fetched
        )

    def upload(self, source: Path, uri: str) -> ObjectInfo:
        raise StoreAccessError(uri, "https sources are read-only")

    def upload_prefix(
        self, source: Path, prefix_uri: str, concurrency: int = 8
    ) -> builtins.list[ObjectInfo]:
        raise StoreAccessError(prefix_uri, "https sources are read-only")

    def _url(self, uri: str) -> str:
        parsed = self.check_uri(uri)
        return f"{parsed.scheme}://{parsed.bucket}/{quote(parsed.key)}"

    def _auth_headers(self, uri: str, url: str) -> dict[str, str]:
        """The token, for ``url`` only over https and on the origin of ``uri`` itself: never
        to the host a redirect leads to, never in clear."""
        if self.bearer_token is None:
            return {}
        if urlsplit(self._url(uri)).scheme != "https":
            raise StoreAccessError(
                uri, "a bearer token is only sent over https: use an https:// URI"
            )
        if _origin(url) != _origin(self._url(uri)):
            return {}
        return {"Authorization": f"Bearer {self.bearer_token.get_secret_value()}"}

    def _request(
        self, uri: str, method: str, headers: dict[str, str] | None = None
    ) -> tuple[Any, str]:
        """The response to ``method`` on ``uri`` after its redirects, and the URL it came
        from; each redirect is checked against the policy before it is followed."""
        url = self._url(uri)
        for _ in range(_MAX_REDIRECTS + 1):
            all_headers = {**(headers or {}), **self._auth_headers(uri, url)}
            try:
                response = self.pool.request(
                    method, url, headers=all_headers, preload_content=True, redirect=False
                )
            except urllib3.exceptions.HTTPError as error:
                raise StoreError(f"{uri}: request failed: {type(error).__name__}") from None
            if response.status in _REDIRECTS and response.headers.get("Location"):
                target = urljoin(url, response.headers["Location"])
                self._check_redirect(uri, url, target)
                url = target
                continue
            if response.status < 400:
                return response, url
            raise _status_error(uri, response.status)
        raise StoreError(f"{uri}: more than {_MAX_REDIRECTS} redirects")

    def _check_redirect(self, uri: str, current: str, target: str) -> None:
        parts = urlsplit(target)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise StoreAccessError(uri, f"redirected to {_without_query(target)}: not http(s)")
        if self.allow_private_redirects or _origin(target) == _origin(current):
            return
        try:
            addresses = {
                info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)
            }
        except OSError as error:
            raise StoreError(
                f"{uri}: redirected to unresolvable {parts.hostname}: {error}"
            ) from None
        for address in addresses:
            if not ipaddress.ip_address(str(address).split("%")[0]).is_global:
                raise StoreAccessError(
                    uri,
                    f"redirected to {_without_query(target)}, a loopback, link-local or "
                    f"private address ({address}); set allow_private_redirects to follow "
                    "redirects to an on-premises mirror",
                )


_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default_port


def _without_query(url: str) -> str:
    """A URL fit for an error message: no query (signed URLs carry credentials there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _content_length(uri: str, response: Any) -> int:
    """The response's Content-Length, refused unless it is a plain non-negative integer."""
    text = response.headers.get("Content-Length")
    if text is None:
        raise StoreError(f"{uri}: the server sent no Content-Length")
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_LENGTH_DIGITS:
        raise IntegrityError(uri, f"the server sent an invalid Content-Length {text[:40]!r}")
    size = int(text)
    if size > _MAX_OBJECT_BYTES:
        raise IntegrityError(uri, f"Content-Length {size} is larger than any file gpuflow takes")
    return size


_MAX_LENGTH_DIGITS = 20
_MAX_OBJECT_BYTES = 2**50  # 1 PiB: far beyond any model file, far below what breaks os calls


class _ThreadConnections(threading.local):
    """One kept-alive connection per origin and worker thread, for the ranged GETs.

    The ranges use ``http.client`` itself: its ``readinto`` fills the caller's buffer
    from the socket directly, where urllib3's copies through an intermediate bytes object.
    """

    def __init__(self) -> None:
        self.by_origin: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def get(
        self, url: str, headers: dict[str, str], source: HttpSource
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            connection = self.by_origin.get(origin)
            if connection is None:
                connection = _connect(parts.scheme, parts.netloc, source)
                self.by_origin[origin] = connection
            try:
                connection.request("GET", target, headers=headers)
                return connection, connection.getresponse()
            except (http.client.HTTPException, OSError):
                # The server may have closed a kept-alive connection: one more, fresh.
                connection.close()
                del self.by_origin[origin]
                if attempt == 2:
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")


def _connect(scheme: str, netloc: str, source: HttpSource) -> http.client.HTTPConnection:
    if scheme == "http":
        return http.client.HTTPConnection(netloc, timeout=source.timeout_s)
    context = ssl.create_default_context()
    if not source.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection(netloc, timeout=source.timeout_s, context=context)


class _SocketReader:
    def __init__(self, uri: str, response: http.client.HTTPResponse) -> None:
        self._uri = uri
        self._response = response

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            return self._response.readinto(buffer)
        except (http.client.HTTPException, OSError) as error:
            raise StoreError(f"{self._uri}: connection lost mid-part: {error!r}") from None


def _status_error(uri: str, status: int) -> GpuflowError:
    if status == 404:
        return ObjectNotFoundError(uri)
    if status in (401, 403):
        return StoreAccessError(uri, f"access denied (HTTP {status}): check the bearer token")
    if status == 416:
        return IntegrityError(uri, "the server refused the byte range (the file shrank?)")
    return StoreError(f"{uri}: the server answered HTTP {status}")
