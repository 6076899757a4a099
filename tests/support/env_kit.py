"""Offline material for the environment fabric tests: a tiny wheelhouse and job projects.

Wheels and job projects use uv's own build backend, which uv builds in-process
(no backend download), and jobs are locked with ``--no-index --find-links`` so
nothing here needs the network.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uv

BUILD_SYSTEM = '[build-system]\nrequires = ["uv_build>=0.9,<1"]\nbuild-backend = "uv_build"\n'


def uv_run(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env["UV_CACHE_DIR"] = str(cache)
    return subprocess.run(
        [uv.find_uv_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )


def write_package(
    directory: Path, name: str, version: str, body: str, scripts: dict[str, str], deps: list[str]
) -> Path:
    """A uv project with one module ``name`` (``body`` is its code)."""
    module = name.replace("-", "_")
    (directory / "src" / module).mkdir(parents=True, exist_ok=True)
    (directory / "src" / module / "__init__.py").write_text(body)
    script_lines = "".join(f'{script} = "{target}"\n' for script, target in scripts.items())
    (directory / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "{version}"\nrequires-python = ">=3.10"\n'
        f"dependencies = {deps!r}\n"
        + (f"\n[project.scripts]\n{script_lines}" if scripts else "")
        + f"\n{BUILD_SYSTEM}"
    )
    return directory


def build_wheel(source: Path, wheelhouse: Path, cache: Path) -> None:
    uv_run(
        ["build", "--offline", "--wheel", "--out-dir", str(wheelhouse), str(source)], source, cache
    )


def build_wheelhouse(root: Path, cache: Path) -> Path:
    """``tinytool`` (a console script) and ``bulkpkg`` (a 256 KiB data file)."""
    wheelhouse = root / "wheelhouse"
    tinytool = write_package(
        root / "src-tinytool",
        "tinytool",
        "1.0.0",
        'def main() -> None:\n    print("tinytool 1.0.0")\n',
        {"tinytool": "tinytool:main"},
        [],
    )
    bulkpkg = write_package(root / "src-bulkpkg", "bulkpkg", "2.0.0", "VALUE = 2\n", {}, [])
    (bulkpkg / "src" / "bulkpkg" / "table.bin").write_bytes(os.urandom(256 * 1024))
    for source in (tinytool, bulkpkg):
        build_wheel(source, wheelhouse, cache)
    return wheelhouse


def make_job(
    directory: Path,
    find_links: str,
    cache: Path,
    deps: tuple[str, ...] = ("tinytool", "bulkpkg"),
    marker: str = "v1",
) -> Path:
    """A job project whose env has ``deps``, locked offline against ``find_links``."""
    write_package(
        directory,
        "demo-job",
        "0.1.0",
        f'MARKER = "{marker}"\n\n\ndef main() -> None:\n    print("demo-job", MARKER)\n',
        {"demo-job": "demo_job:main"},
        list(deps),
    )
    lock_job(directory, find_links, cache)
    return directory


def lock_job(directory: Path, find_links: str, cache: Path) -> None:
    # A find-links URL is our own server on 127.0.0.1, which --offline would refuse.
    offline = [] if find_links.startswith("http") else ["--offline"]
    uv_run(
        ["lock", *offline, "--no-index", "--find-links", find_links, "--python", sys.executable],
        directory,
        cache,
    )


def set_source_marker(job: Path, marker: str) -> None:
    """Change the job's own code (and so its key) without touching its lock."""
    (job / "src" / "demo_job" / "__init__.py").write_text(
        f'MARKER = "{marker}"\n\n\ndef main() -> None:\n    print("demo-job", MARKER)\n'
    )


class GatedWheelServer:
    """An HTTP find-links index on 127.0.0.1 whose wheel downloads wait for a gate.

    With the gate closed, a build is provably in progress (uv is waiting for a
    wheel) at the moment a test acts on it.
    """

    def __init__(self, directory: Path) -> None:
        self.gate = threading.Event()
        self.wheel_requested = threading.Event()
        gate, requested = self.gate, self.wheel_requested

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                if self.path.endswith(".whl"):
                    requested.set()
                    if not gate.wait(timeout=60):
                        self.send_error(503, "gate never opened")
                        return
                # The client may be killed mid-download, as a test intends.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @contextmanager
    def running(self) -> Iterator[GatedWheelServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self.gate.set()
            self._server.shutdown()
            self._server.server_close()
