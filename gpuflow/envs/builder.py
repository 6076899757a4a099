"""One uv build of one environment, at its final path, and what it produced.

The venv is built where it will be used (``envs/<key>/.venv``): venvs are not
relocatable, console-script shebangs hold the absolute interpreter path. The
caller holds the key's build lock and writes the ready marker after this returns.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import uv

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.envs import shared_bytecode
from gpuflow.envs.key import local_package_names, platform_tag
from gpuflow.envs.records import BaseInterpreter, EnvMetadata, now

logger = logging.getLogger("gpuflow.envs")

HARDLINK_FALLBACK = "Failed to hardlink"
_ERROR_TAIL_LINES = 40
# uv writes these per install (not from the cache), so they never share an inode.
_PER_INSTALL_FILES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


@dataclass(frozen=True)
class BuildSettings:
    cache_dir: Path
    python_install_dir: Path
    bytecode_store: Path
    python: str  # a path or a version request such as "3.11.7"
    managed_python: bool
    timeout_s: float


def uv_environment(settings: BuildSettings) -> dict[str, str]:
    """The process environment of uv: our settings only, none inherited from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env.update(
        UV_CACHE_DIR=str(settings.cache_dir),
        UV_PYTHON_INSTALL_DIR=str(settings.python_install_dir),
        # uv's default is clone-with-fallbacks; hardlinks are what share one cache.
        UV_LINK_MODE="hardlink",
        UV_NO_PROGRESS="1",
    )
    return env


@functools.cache
def uv_version() -> str:
    completed = subprocess.run(
        [uv.find_uv_bin(), "--version"], capture_output=True, text=True, check=True
    )
    return completed.stdout.removeprefix("uv").strip()


def same_filesystem(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _sync_command(settings: BuildSettings, project_dir: Path) -> list[str]:
    command = [
        uv.find_uv_bin(),
        "sync",
        "--frozen",
        "--no-dev",
        "--no-editable",
        "--python",
        settings.python,
        "--project",
        str(project_dir),
    ]
    # uv caches wheels it built from local sources under keys that see pyproject.toml but
    # not the code: without a refresh a changed job would get its old code installed.
    for name in local_package_names(project_dir):
        command += ["--refresh-package", name]
    if settings.managed_python:
        # The venv's base interpreter then lives under UV_PYTHON_INSTALL_DIR on the NAS,
        # at the same path in every pod and task.
        command.append("--managed-python")
    return command


def _error_tail(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_ERROR_TAIL_LINES:])


def run_uv_sync(settings: BuildSettings, project_dir: Path, venv: Path, key: str) -> str:
    """Run ``uv sync`` into ``venv``; returns uv's stderr. Raises with uv's own words."""
    env = uv_environment(settings) | {"UV_PROJECT_ENVIRONMENT": str(venv)}
    try:
        completed = subprocess.run(
            _sync_command(settings, project_dir),
            env=env,
            capture_output=True,
            text=True,
            timeout=settings.timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(
            f"building the environment of {project_dir} (key {key}) took over "
            f"{settings.timeout_s:.0f}s"
        ) from None
    if completed.returncode != 0:
        raise EnvironmentBuildError(
            f"uv could not build the environment of {project_dir} (key {key}); uv said:",
            _error_tail(completed.stderr),
        )
    return completed.stderr


@dataclass(frozen=True)
class BytecodeResult:
    linked: int
    compiled: int


def compile_bytecode(settings: BuildSettings, venv: Path, key: str) -> BytecodeResult:
    """Bytecode for every module of the env, shared across envs (``shared_bytecode.py``).

    Run by the env's interpreter: a ``.pyc`` carries its Python's magic number.
    """
    site_packages = sorted(venv.glob("lib/python*/site-packages"))
    if len(site_packages) != 1:
        raise EnvironmentBuildError(f"env {key}: expected one site-packages, found {site_packages}")
    command = [
        str(venv / "bin" / "python"),
        "-I",  # isolated: neither the caller's environment nor its cwd leak in
        shared_bytecode.__file__,
        str(site_packages[0]),
        str(settings.bytecode_store),
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=settings.timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(
            f"compiling the bytecode of env {key} took over {settings.timeout_s:.0f}s"
        ) from None
    if completed.returncode != 0:
        raise EnvironmentBuildError(
            f"compiling the bytecode of env {key} failed:", _error_tail(completed.stderr)
        )
    counts = json.loads(completed.stdout.strip().splitlines()[-1])
    return BytecodeResult(linked=int(counts["linked"]), compiled=int(counts["compiled"]))


@dataclass(frozen=True)
class VenvScan:
    size_bytes: int
    files: int
    hardlinked_files: int
    cacheable_files: int  # package files that can come from the uv cache
    cache_linked_files: int  # ... and do share an inode with it


def scan_venv(venv: Path) -> VenvScan:
    """Sizes and link counts of the venv's files, in one walk (scandir: ~20k files)."""
    size = files = hardlinked = cacheable = cache_linked = 0
    pending = [str(venv)]
    while pending:
        directory = pending.pop()
        in_site_packages = "site-packages" in directory
        in_bytecode_dir = directory.endswith("__pycache__")
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue  # symlinks (bin/python) and the like
                size += st.st_size
                files += 1
                hardlinked += st.st_nlink > 1
                # Bytecode is compiled into the venv and uv's own records are per
                # install: only the other files of site-packages come from the cache.
                if (
                    in_site_packages
                    and not in_bytecode_dir
                    and entry.name not in _PER_INSTALL_FILES
                ):
                    cacheable += 1
                    cache_linked += st.st_nlink > 1
    return VenvScan(size, files, hardlinked, cacheable, cache_linked)


def installed_packages(venv: Path) -> dict[str, str]:
    """Name and version of each distribution in the venv, read from its dist-info."""
    packages: dict[str, str] = {}
    for metadata in sorted(venv.glob("lib/python*/site-packages/*.dist-info/METADATA")):
        fields: dict[str, str] = {}
        with metadata.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break  # the headers end at the first blank line
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
        if "Name" in fields:
            packages[fields["Name"]] = fields.get("Version", "")
    return packages


def check_shebangs(venv: Path) -> None:
    """Every console script must start the venv's own interpreter at its final path."""
    expected = str(venv / "bin" / "python")
    for script in sorted((venv / "bin").iterdir()):
        if not script.is_file() or script.is_symlink():
            continue
        with script.open("rb") as handle:
            first = handle.readline(4096)
        if first.startswith(b"#!/") and b"python" in first:
            interpreter = first[2:].decode(errors="replace").strip().split()[0]
            if interpreter != expected:
                raise EnvironmentBuildError(
                    f"console script {script} starts {interpreter!r}, not the env's "
                    f"interpreter {expected!r}: the venv was not built at its final path"
                )


def base_interpreter(venv: Path) -> str:
    config = (venv / "pyvenv.cfg").read_text()
    match = re.search(r"^home\s*=\s*(.+)$", config, re.MULTILINE)
    return match.group(1).strip() if match else ""


def env_python_version(venv: Path) -> str:
    config = (venv / "pyvenv.cfg").read_text()
    match = re.search(r"^version_info\s*=\s*(.+)$", config, re.MULTILINE) or re.search(
        r"^version\s*=\s*(.+)$", config, re.MULTILINE
    )
    return match.group(1).strip() if match else platform.python_version()


def venv_interpreter(venv: Path) -> BaseInterpreter:
    """What ``venv/bin/python`` starts: the target of its symlink as the kernel will look it
    up (not resolved further: a container needs that very path), and the venv's version."""
    python = venv / "bin" / "python"
    path = python
    if python.is_symlink():
        path = python.parent / python.readlink()
    return BaseInterpreter(path=os.path.normpath(path), version=env_python_version(venv))


def build(
    settings: BuildSettings, project_dir: Path, root: Path, key: str, job: str
) -> EnvMetadata:
    """Build ``root/.venv`` and describe it; ``root`` must not exist yet."""
    started = time.monotonic()
    if not same_filesystem(settings.cache_dir, root.parent):
        logger.warning(
            "uv cache %s is on another filesystem than %s: uv will COPY every package "
            "into env %s instead of hardlinking it (slow, and no disk is shared)",
            settings.cache_dir,
            root.parent,
            key,
        )
    root.mkdir()
    venv = root / ".venv"
    stderr = run_uv_sync(settings, project_dir, venv, key)
    bytecode = compile_bytecode(settings, venv, key)
    check_shebangs(venv)
    scan = scan_venv(venv)
    fell_back = HARDLINK_FALLBACK in stderr or (
        scan.cacheable_files > 0 and scan.cache_linked_files == 0
    )
    if fell_back:
        logger.warning(
            "env %s was built by COPYING packages (uv: %r): put UV_CACHE_DIR %s on the "
            "same filesystem as %s",
            key,
            HARDLINK_FALLBACK,
            settings.cache_dir,
            root.parent,
        )
    created = now()
    return EnvMetadata(
        key=key,
        job=job,
        project=str(project_dir),
        python=env_python_version(venv),
        base_python=base_interpreter(venv),
        platform=platform_tag(),
        packages=installed_packages(venv),
        size_bytes=scan.size_bytes,
        files=scan.files,
        hardlinked_files=scan.hardlinked_files,
        link_mode="copy" if fell_back else "hardlink",
        bytecode_linked=bytecode.linked,
        bytecode_compiled=bytecode.compiled,
        build_seconds=round(time.monotonic() - started, 3),
        builder=f"{socket.gethostname()}:{os.getpid()}",
        uv_version=uv_version(),
        created=created,
        last_used=created,
    )
