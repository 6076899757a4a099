"""An HTTP/1.1 proxy in the test's event loop that records every request it forwards and
the status of its answer: what a real server received, seen from the wire, without
touching the client under test or the server.

It parses what it forwards (request and status lines, ``Content-Length`` and chunked
bodies, keep-alive), which is all the HTTP that httpx and uvicorn speak to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    status: int


class RecordingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self.exchanges: list[Exchange] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # keep-alive connections of the clients
                writer.transport.abort()
            await self._server.wait_closed()

    def received(self, path_suffix: str) -> list[Exchange]:
        return [exchange for exchange in self.exchanges if exchange.path.endswith(path_suffix)]

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        upstream_in, upstream_out = await asyncio.open_connection(*self.upstream)
        self._writers.update((client_out, upstream_out))
        try:
            while True:
                request_line, request_headers = await _read_head(client_in)
                if not request_line:
                    return
                method, path, _ = request_line.split(" ", 2)
                upstream_out.write(request_line.encode() + b"\r\n" + request_headers)
                await _forward_body(client_in, upstream_out, request_headers)
                status_line, response_headers = await _read_head(upstream_in)
                if not status_line:
                    return
                status = int(status_line.split(" ", 2)[1])
                self.exchanges.append(Exchange(method, path.split("?", 1)[0], status))
                client_out.write(status_line.encode() + b"\r\n" + response_headers)
                if method != "HEAD" and status not in (204, 304):
                    await _forward_body(upstream_in, client_out, response_headers)
                await client_out.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            for writer in (upstream_out, client_out):
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """The first line, and the header block after it (ending in the blank line)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return "", b""
    first, _, headers = head.partition(b"\r\n")
    return first.decode("latin-1"), headers


def _header(headers: bytes, name: str) -> str | None:
    for line in headers.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def _forward_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: bytes
) -> None:
    if (_header(headers, "transfer-encoding") or "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            writer.write(size_line)
            size = int(size_line.split(b";", 1)[0], 16)
            writer.write(await reader.readexactly(size + 2))  # the chunk and its CRLF
            if size == 0:
                return
    length = int(_header(headers, "content-length") or 0)
    if length:
        writer.write(await reader.readexactly(length))
