"""Real servers the storage tests talk to over loopback HTTP.

- ``MotoServer``: moto's S3 server in its own process (boto3 reaches it over HTTP).
- ``CountingProxy``: a TCP relay in front of any server that counts the bytes the
  server sent and can slow them down (to stop a download midway).
- ``RangeFileServer``: a static file server with ``Range``/``ETag`` support, the
  stand-in for an https model host (nginx in production, in the benchmark).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, urlsplit

import anycrc

from devtools.s3rver import installed_s3rver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on a free loopback port, in a process of its own."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):  # noqa: S310 (http)
                    return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class CountingProxy:
    """Relays TCP connections to ``upstream_port``; counts bytes the upstream sent back."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self.bytes_down = 0
        self._generation = 0
        # Past this many bytes down, hold every further chunk until release(): a client
        # can be caught midway on an event, not on a guess of how fast it goes.
        self.stall_after_bytes: int | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        """Zero the count; connections opened before now no longer count (a killed
        client's connections may still drain)."""
        with self._lock:
            self.bytes_down = 0
            self._generation += 1

    def stall_after(self, byte_count: int) -> None:
        with self._lock:
            self.stall_after_bytes = byte_count
            self._flowing.clear()

    def release(self) -> None:
        with self._lock:
            self.stall_after_bytes = None
            self._flowing.set()

    def close(self) -> None:
        self.release()
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            generation = self._generation
            for source, sink, downstream in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, downstream, generation), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, downstream: bool, generation: int
    ) -> None:
        try:
            while chunk := source.recv(256 * 1024):
                if downstream:
                    with self._lock:
                        if generation == self._generation:
                            self.bytes_down += len(chunk)
                        stalled = (
                            self.stall_after_bytes is not None
                            and self.bytes_down > self.stall_after_bytes
                        )
                    if stalled:
                        self._flowing.wait()
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class RangeFileServer:
    """Serves ``root`` over HTTP/1.1 with single byte ranges, ETags and optional bearer auth."""

    def __init__(self, root: Path, bearer_token: str | None = None) -> None:
        self.root = root
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # the request list above is the log

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                if bearer_token and self.headers.get("Authorization") != f"Bearer {bearer_token}":
                    self._empty(HTTPStatus.UNAUTHORIZED)
                    return
                path = (server.root / self.path.lstrip("/")).resolve()
                if not path.is_relative_to(server.root.resolve()) or not path.is_file():
                    self._empty(HTTPStatus.NOT_FOUND)
                    return
                stat = path.stat()
                size = stat.st_size
                etag = '"' + hashlib.sha256(f"{size}-{stat.st_mtime_ns}".encode()).hexdigest() + '"'
                start, end, status = 0, size - 1, HTTPStatus.OK
                requested = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if requested and (if_range is None or if_range == etag):
                    match = _RANGE.match(requested)
                    if not match or int(match.group(1)) >= size:
                        self._empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                        return
                    start = int(match.group(1))
                    end = min(int(match.group(2) or size - 1), size - 1)
                    status = HTTPStatus.PARTIAL_CONTENT
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                self.send_header(
                    "Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True)
                )
                if status == HTTPStatus.PARTIAL_CONTENT:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if not body:
                    return
                with path.open("rb") as handle:
                    handle.seek(start)
                    remaining = end - start + 1
                    while remaining:
                        chunk = handle.read(min(256 * 1024, remaining))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        remaining -= len(chunk)

            def _empty(self, status: HTTPStatus) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class S3rverServer:
    """s3rver 3.7.1 (npm), a second S3 implementation: unlike S3 it gives a multipart
    object the plain MD5 of its bytes as ETag, ignores ``If-Match`` and ``partNumber``
    and keeps no additional checksums."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(installed_s3rver()), "-d", str(data), "-a", "127.0.0.1"]
        self._process = subprocess.Popen(
            [*command, "-p", str(self.port), "-s", "--no-vhost-buckets"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("s3rver did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


_ETAG_VALUE = re.compile(rb"(&quot;|\")([0-9a-f]{32})(-\d+)?(&quot;|\")")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "content-length"}


class OpaqueEtagProxy:
    """An HTTP proxy in front of an S3 server that answers like AWS S3 does for SSE-KMS
    objects (AWS S3 user guide, "Checking object integrity": their ETags are not an MD5
    of the data): every ETag the server gives out becomes another value of the same
    shape, with ``x-amz-server-side-encryption: aws:kms`` (left out with ``announce_kms``
    false: a store that computes ETags its own way and says nothing of it); ETags clients send back
    (``If-Match``, the part list of CompleteMultipartUpload) are mapped to the server's.
    With ``opaque_part_etags`` false, UploadPart answers keep the server's ETag, the part's
    MD5: OSS and COS document their part ETags so, with object ETags of their own making.
    ``crc64ecma_header`` (``x-oss-hash-crc64ecma``, ``x-cos-hash-crc64ecma``) adds the
    CRC-64/ECMA-182 those stores keep of every object (OSS API reference "PutObject",
    "UploadPart", "CompleteMultipartUpload", "HeadObject"; COS "CRC64 check"): taken of
    what the store kept, decimal, on the answers to PUT and UploadPart (of that body), to
    CompleteMultipartUpload (the parts' combined, in the order listed), and to HEAD and
    GET (of the whole object, ranged or not). Objects written past the proxy have none, as
    objects stored before a store kept CRCs.

    With ``corrupt_writes`` set it also stands for a store that keeps other bytes than
    it was sent: the last byte of every PUT body flips, and the checksums the client
    sent (which would give the corruption away on receipt) are dropped. With
    ``corrupt_reads`` the last byte of every object GET answer flips on the way back."""

    def __init__(
        self,
        upstream_port: int,
        announce_kms: bool = True,
        opaque_part_etags: bool = True,
        crc64ecma_header: str | None = None,
    ) -> None:
        self._upstream_port = upstream_port
        self._real_of: dict[bytes, bytes] = {}
        self._crc64 = anycrc.Model("CRC64-XZ")  # ECMA-182 as OSS computes it (Go's crc64.ECMA)
        self._object_crcs: dict[str, tuple[int, int]] = {}  # path: (crc, length)
        self._part_crcs: dict[tuple[str, str], tuple[int, int]] = {}  # (upload, number)
        self._lock = threading.Lock()
        self.corrupt_writes = False
        self.corrupt_reads = False
        # Part numbers whose UploadPart answers carry no CRC, as parts stored before a store
        # kept CRCs: CompleteMultipartUpload then gives none for the object either.
        self.parts_without_crc: set[int] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._relay()

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = proxy._to_real(self.rfile.read(length)) if length else b""
                headers = {
                    name: proxy._to_real(value.encode()).decode()
                    for name, value in self.headers.items()
                    if name.lower() not in _HOP_BY_HOP
                }
                if proxy.corrupt_writes and self.command == "PUT" and body:
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                    headers = {
                        name: value
                        for name, value in headers.items()
                        if not name.lower().startswith(("content-md5", "x-amz-checksum"))
                    }
                upstream = http.client.HTTPConnection("127.0.0.1", proxy._upstream_port)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    query = parse_qs(urlsplit(self.path).query)
                    keeps_etag = not opaque_part_etags and (
                        self.command == "PUT" and "partNumber" in query and "uploadId" in query
                    )
                    content = answer.read() if keeps_etag else proxy._to_opaque(answer.read())
                    crc = (
                        proxy._kept_crc(self.command, self.path, query, headers, body)
                        if crc64ecma_header and 200 <= answer.status < 300
                        else None
                    )
                    object_read = self.command == "GET" and "?" not in self.path
                    if proxy.corrupt_reads and object_read and content:
                        content = content[:-1] + bytes([content[-1] ^ 0xFF])
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in _HOP_BY_HOP:
                            kept = (
                                value if keeps_etag else proxy._to_opaque(value.encode()).decode()
                            )
                            self.send_header(name, kept)
                    if announce_kms and (answer.getheader("ETag") or b"ETag" in content):
                        self.send_header("x-amz-server-side-encryption", "aws:kms")
                    if crc64ecma_header and crc is not None:
                        self.send_header(crc64ecma_header, str(crc))
                    # A HEAD answer has no body but the length of the one GET would send.
                    announced = answer.getheader("Content-Length", "0")
                    self.send_header(
                        "Content-Length", announced if self.command == "HEAD" else str(len(content))
                    )
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(content)
                finally:
                    upstream.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _kept_crc(
        self,
        command: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> int | None:
        """The CRC-64/ECMA-182 the modeled store gives in its answer to this request."""
        key = urlsplit(path).path
        upload = query.get("uploadId", [""])[0]
        with self._lock:
            if command == "PUT" and not query:
                if "x-amz-copy-source" in map(str.lower, headers):
                    self._object_crcs.pop(key, None)  # a copy may have none (OSS says so)
                    return None
                self._object_crcs[key] = (int(self._crc64.calc(body)), len(body))
                return self._object_crcs[key][0]
            if command == "PUT" and upload and "partNumber" in query:
                if int(query["partNumber"][0]) in self.parts_without_crc:
                    return None
                part = (int(self._crc64.calc(body)), len(body))
                self._part_crcs[(upload, query["partNumber"][0])] = part
                return part[0]
            if command == "POST" and upload:
                numbers = re.findall(rb"<PartNumber>(\d+)</PartNumber>", body)
                parts = [self._part_crcs.get((upload, number.decode())) for number in numbers]
                if not parts or None in parts:
                    return None  # a part without a CRC: the store gives none (COS says so)
                crc, length = 0, 0
                for part_crc, part_length in cast(list[tuple[int, int]], parts):
                    crc = int(self._crc64.combine(crc, part_crc, part_length))
                    length += part_length
                self._object_crcs[key] = (crc, length)
                return crc
            if command == "DELETE" and not query:
                self._object_crcs.pop(key, None)
            if command in ("GET", "HEAD") and not query and key in self._object_crcs:
                return self._object_crcs[key][0]
        return None

    def _to_opaque(self, data: bytes) -> bytes:
        def opaque(match: re.Match[bytes]) -> bytes:
            real = match.group(2)
            fake = hashlib.md5(b"kms:" + real, usedforsecurity=False).hexdigest().encode()
            with self._lock:
                self._real_of[fake] = real
            return match.group(1) + fake + (match.group(3) or b"") + match.group(4)

        return _ETAG_VALUE.sub(opaque, data)

    def _to_real(self, data: bytes) -> bytes:
        def real(match: re.Match[bytes]) -> bytes:
            with self._lock:
                value = self._real_of.get(match.group(2), match.group(2))
            return match.group(1) + value + (match.group(3) or b"") + match.group(4)

        return _ETAG_VALUE.sub(real, data)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
