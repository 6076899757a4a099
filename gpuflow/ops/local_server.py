"""The embedded default's Prefect server: SQLite under a project-local state directory.

``ensure_server`` reuses a healthy server recorded in ``<state>/server.json`` or
starts one in the background (its own session, so it outlives the command that
started it and answers the next one at once).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gpuflow.core.locks import process_alive

_START_TIMEOUT_S = 120.0


def local_api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


class ServerError(RuntimeError):
    """The local Prefect server did not start or answer."""


@dataclass(frozen=True)
class LocalServer:
    pid: int
    port: int
    home: Path

    @property
    def api_url(self) -> str:
        return local_api_url(self.port)

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def server_environment(
    home: Path, port: int, database_url: str | None = None, redis_url: str | None = None
) -> dict[str, str]:
    """Settings of a local server on ``port``: no analytics (there may be no internet), durable
    leases, and a UI that calls this server's API.

    ``database_url`` (``postgresql+asyncpg://...``) replaces the SQLite file under ``home``;
    ``redis_url`` (``redis://host:port/db``) keeps leases in Redis (prefect-redis) instead of
    under ``home``, so several servers on one database share them."""
    environment = {
        "PREFECT_HOME": str(home),
        # Unset, the UI calls 127.0.0.1:4200: no server there, or another server's data.
        "PREFECT_UI_API_URL": local_api_url(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # In-memory leases die with the server and leak their GPU slots for good.
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
            "prefect.server.concurrency.lease_storage.filesystem"
        ),
        "PREFECT_API_DATABASE_CONNECTION_URL": (
            database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        ),
    }
    if redis_url is not None:
        environment["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] = "prefect_redis.lease_storage"
        environment["PREFECT_REDIS_MESSAGING_URL"] = redis_url
    return environment


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_server(state_dir: Path) -> LocalServer | None:
    """The recorded server if it is alive and answering."""
    try:
        record = json.loads((state_dir / "server.json").read_text())
        server = LocalServer(int(record["pid"]), int(record["port"]), Path(record["home"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if process_alive(server.pid) and _healthy(server.port):
        return server
    return None


def ensure_server(
    state_dir: Path,
    port: int | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> tuple[LocalServer, bool]:
    """A healthy local server and whether this call started it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = read_server(state_dir)
    if existing is not None:
        return existing, False
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log_path = state_dir / "server.log"
    env = {**os.environ, **server_environment(home, port, database_url, redis_url)}
    env.pop("PREFECT_API_URL", None)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start",
             "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; stopped by `gpuflow server stop`
        )  # fmt: skip
    server = LocalServer(process.pid, port, home)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _healthy(port):
        if process.poll() is not None:
            raise ServerError(
                f"the Prefect server exited with code {process.returncode}; see {log_path}"
            )
        if time.monotonic() > deadline:
            stop_process(process.pid)
            raise ServerError(
                f"the Prefect server did not answer within {_START_TIMEOUT_S:.0f}s; see {log_path}"
            )
        time.sleep(0.5)
    record = state_dir / "server.json"
    record.write_text(json.dumps({"pid": server.pid, "port": server.port, "home": str(home)}))
    return server, True


def stop_process(pid: int, grace_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while process_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def stop_server(state_dir: Path) -> bool:
    """Stop the recorded server; False when none was running."""
    record = state_dir / "server.json"
    server = read_server(state_dir)
    record.unlink(missing_ok=True)
    if server is None:
        return False
    stop_process(server.pid)
    return True
