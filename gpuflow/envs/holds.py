"""Holds on an environment: shared flocks that garbage collection must not break.

A run that uses an env holds ``envs/.holds/<key>.hold`` shared for as long as it
runs; GC evicts only after taking the same file exclusively without waiting. The
kernel drops the lock of a holder that dies, so a crashed run never pins an env.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from gpuflow.locks import shared_lock


def shared_hold(path: Path, timeout_s: float, poll_s: float = 0.05) -> AbstractContextManager[None]:
    """Hold ``path`` shared; waits only while GC holds it exclusively (a rename long)."""
    return shared_lock(path, timeout_s, poll_s)


@contextmanager
def exclusive_if_free(path: Path) -> Iterator[bool]:
    """Take ``path`` exclusively without waiting; yields whether it was free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
