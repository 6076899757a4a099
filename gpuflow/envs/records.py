"""The fabric's files on the NAS, each written atomically (temp file, fsync, rename).

envs/<key>/            .venv/, pyproject.toml, uv.lock, metadata.json (written last)
envs/.locks/<key>.lock build lock: one builder per key across every host
envs/.holds/<key>.hold shared flock per run using the env; GC needs it exclusively
envs/.jobs/<job>.json  the job's current key and the keys it had before
envs/.pins/<job>.json  a pin: the job runs this key whatever its sources say
envs/.sources/         the stat index of job projects (see ``key.py``)
envs/.trash/           evicted envs on their way out (renamed first, then deleted)
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

METADATA = "metadata.json"


def now() -> datetime:
    return datetime.now(UTC)


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a part of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with partial.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


class BaseInterpreter(BaseModel):
    """The interpreter a venv runs on: the executable its ``bin/python`` links to, and the
    Python version it was built with. Wherever the env runs, that executable must exist at
    this path and be this minor version (bytecode and extension modules are per minor)."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(pattern=r"^/", description="Absolute path of the executable.")
    version: str = Field(pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?", description="e.g. 3.11.2")

    @property
    def minor(self) -> str:
        """``3.11`` of ``3.11.2``: what a venv needs of its interpreter."""
        return ".".join(self.version.split(".")[:2])


class EnvMetadata(BaseModel):
    """``envs/<key>/metadata.json``: its presence with status ready marks the env usable."""

    key: str
    status: Literal["ready"] = "ready"
    job: str
    project: str
    python: str = Field(description="Python version of the env.")
    base_python: str = Field(description="The interpreter the venv points at (pyvenv.cfg home).")
    platform: str
    packages: dict[str, str]
    size_bytes: int = Field(description="Apparent size of the venv; shared files count fully.")
    files: int
    hardlinked_files: int = Field(description="Files of the venv that share an inode (the cache).")
    link_mode: Literal["hardlink", "copy"]
    bytecode_linked: int = Field(description=".pyc files hardlinked from the shared store.")
    bytecode_compiled: int = Field(description=".pyc files this build had to compile.")
    build_seconds: float
    builder: str = Field(description="host:pid of the process that built it.")
    uv_version: str
    created: datetime
    last_used: datetime = Field(description="Refreshed from the file's mtime when read.")


class JobRecord(BaseModel):
    """``envs/.jobs/<job>.json``: which key a job resolves to now, and which before."""

    job: str
    project: str
    current: str
    history: list[str] = Field(default_factory=list, description="Earlier keys, newest first.")
    updated: datetime


class Pin(BaseModel):
    """``envs/.pins/<job>.json``: run this key, not the one the sources hash to (rollback)."""

    job: str
    key: str
    reason: str = ""
    pinned: datetime
