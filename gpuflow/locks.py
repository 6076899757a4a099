"""Cross-process locks on shared storage.

``flock`` locks are released by the kernel when their holder dies, so a lock left
by a killed process never blocks the next one (NFSv4 and EFS carry them to the
server; every host sharing the NAS sees them).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeoutError(TimeoutError):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__(f"timed out after {timeout_s:.0f}s waiting for the lock {path}")
        self.path = path


def _wait_for_flock(fd: int, mode: int, path: Path, timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LockTimeoutError(path, timeout_s) from None
            time.sleep(poll_s)  # short sleeps keep a waiting run cancellable


@contextmanager
def exclusive_lock(path: Path, timeout_s: float, poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait_for_flock(fd, fcntl.LOCK_EX, path, timeout_s, poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def shared_lock(path: Path, timeout_s: float, poll_s: float = 0.05) -> Iterator[None]:
    """Hold ``path`` shared; waits only while someone holds it exclusively."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait_for_flock(fd, fcntl.LOCK_SH, path, timeout_s, poll_s)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def process_alive(pid: int) -> bool:
    """True while a process with ``pid`` exists on this host (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
