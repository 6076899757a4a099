"""Small HTTP(S) servers that answer the way hostile or broken servers do: redirects to
anywhere, nonsense Content-Length. Each records the requests it got, with their
Authorization header, so a test can say which host saw a token."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Answer = Callable[[BaseHTTPRequestHandler], None]


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1/localhost."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl(1) makes the test certificate"
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class AnswerServer:
    """Answers every request with ``answer(handler)``; ``host`` picks the address name."""

    def __init__(
        self, answer: Answer, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # ``seen`` is the log

            def do_HEAD(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def _answer(self) -> None:
                server.seen.append((self.command, self.path, self.headers.get("Authorization")))
                answer(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def redirect_to(base: str) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", base + handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def file_body(data: bytes, length: str | None = None) -> Answer:
    """``data`` whole (no ranges), announced with ``length`` instead of its size if given."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)) if length is None else length)
        handler.send_header("Connection", "close")
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(data)

    return answer
