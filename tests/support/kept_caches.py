"""Caches a test session's NAS shares with the sessions before and after it."""

from __future__ import annotations

import os
from pathlib import Path

# The uv cache the session's NAS uses, kept between sessions: the wan-i2v job's env holds
# torch with its CUDA libraries (about 3 GB to download), fetched once per machine, not
# once per session. A real NAS keeps its cache the same way.
_KEPT_UV_CACHE = Path(
    os.environ.get("GPUFLOW_TEST_UV_CACHE", Path.home() / ".cache" / "gpuflow-tests" / "uv")
)
# And the envs' shared bytecode beside it: its entries are named by the cached sources'
# inodes, so they stay valid as long as the cache does, and a session links torch's .pyc
# files instead of compiling them again (~30 s of CPU per session for the wan-i2v env).
_KEPT_BYTECODE = _KEPT_UV_CACHE.with_name(f"{_KEPT_UV_CACHE.name}-bytecode")
# What a NAS keeps under these names, for tests that mount the NAS into a container.
KEPT_NAS_DIRS = ("uv-cache", "bytecode")


def keep_caches(nas_root: Path) -> None:
    """Link (symlink) the NAS's uv cache and bytecode store to the kept ones when they
    share a filesystem with the NAS, since the envs hardlink their files from them and
    hardlinks work only within one; elsewhere the session fills caches of its own. The
    kept bytecode store is not pruned: it grows only when the uv cache gets new files."""
    nas_root.mkdir(parents=True, exist_ok=True)
    for name, kept in zip(KEPT_NAS_DIRS, (_KEPT_UV_CACHE, _KEPT_BYTECODE), strict=True):
        kept.mkdir(parents=True, exist_ok=True)
        if kept.stat().st_dev == nas_root.stat().st_dev:
            (nas_root / name).symlink_to(kept, target_is_directory=True)
