"""Whether processes a test started (or whose pids it recorded) still run."""

from __future__ import annotations

from pathlib import Path

from gpuflow.core.locks import process_alive


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie: dead, but listed until its parent
    reaps it."""
    if not process_alive(pid):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
