"""A real full filesystem: a small tmpfs mounted for the test and filled to the last byte,
so writes fail with ENOSPC as on a full NAS. Mounting needs root (CAP_SYS_ADMIN); where
the test runs without it, the tests that need a full disk skip and say why."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def full_filesystem(mount_point: Path, size_kib: int = 256) -> Iterator[Path]:
    """``mount_point`` as a tmpfs of ``size_kib`` KiB (fill it with ``fill``)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount(8) to make a small filesystem to fill")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run([umount, "-l", str(mount_point)], check=True)


def fill(directory: Path) -> None:
    """Write into ``directory`` until its filesystem has no byte left."""
    with (directory / ".filler").open("wb", buffering=0) as filler:
        block = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                filler.write(block)
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0")
