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
from contextlib import AbstractContextManager, ExitStack, contextmanager
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
def _flock_held(path: Path, mode: int, timeout_s: float, poll_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait_for_flock(fd, mode, path, timeout_s, poll_s)
        try:
            yield
        finally:
            # Explicitly: a copy of the descriptor in a child process would keep it held.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def exclusive_lock(
    path: Path, timeout_s: float, poll_s: float = 0.2
) -> AbstractContextManager[None]:
    """Hold an exclusive lock on ``path`` (created if absent) for the ``with`` block."""
    return _flock_held(path, fcntl.LOCK_EX, timeout_s, poll_s)


def shared_lock(path: Path, timeout_s: float, poll_s: float = 0.05) -> AbstractContextManager[None]:
    """Hold ``path`` shared; waits only while someone holds it exclusively."""
    return _flock_held(path, fcntl.LOCK_SH, timeout_s, poll_s)


@contextmanager
def exclusive_lock_if_free(path: Path) -> Iterator[bool]:
    """Take ``path`` exclusively without waiting; yields whether it was free (and is held)."""
    with ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(path, timeout_s=0.0, poll_s=0.0))
        except LockTimeoutError:
            yield False
            return
        yield True


def process_alive(pid: int) -> bool:
    """True while a process with ``pid`` exists on this host (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
