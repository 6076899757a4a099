"""Debian packages the tests and benchmarks use (PgBouncer, the Distribution registry,
nginx, Node.js and npm), installed where they are missing and the caller runs as root on
Debian, as on CI's machine kind.

Elsewhere nothing is installed: ``debian_binary`` answers None and the caller says which
package is missing (a test skips, or fails where services are required)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def _found(binaries: tuple[str, ...]) -> str | None:
    for binary in binaries:
        if Path(binary).is_absolute():
            if Path(binary).is_file():
                return binary
        elif found := shutil.which(binary):
            return found
    return None


def debian_binary(package: str, *binaries: str) -> str | None:
    """The first of ``binaries`` found (a name on PATH or an absolute path), after
    installing ``package`` with apt-get where none is and that is possible."""
    if found := _found(binaries):
        return found
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        return None
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt_get, "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(install, env=environment, capture_output=True, timeout=600).returncode:
        # A machine whose package lists are stale or absent: refresh them once.
        subprocess.run(
            [apt_get, "update", "-qq"], env=environment, capture_output=True, timeout=600
        )
        subprocess.run(install, env=environment, capture_output=True, timeout=600)
    return _found(binaries)
