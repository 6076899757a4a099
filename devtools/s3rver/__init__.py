"""s3rver 3.7.1 (npm), a second S3 implementation, installed from the pinned lock beside
this file (``package.json`` + ``package-lock.json``) once per lock into a cache folder.

Node.js and npm are the Debian packages ``nodejs`` and ``npm``, installed where missing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

from devtools.debian import debian_binary

S3RVER_PROJECT = Path(__file__).parent
# s3rver's built-in account (its README): the only keys it accepts.
S3RVER_KEY = "S3RVER"


def installed_s3rver() -> Path:
    """The s3rver executable, installed with ``npm ci`` where it is not yet."""
    lock = (S3RVER_PROJECT / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpuflow-tests"
    folder = cache / f"s3rver-{hashlib.sha256(lock).hexdigest()[:16]}"
    binary = folder / "node_modules" / ".bin" / "s3rver"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".install.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # parallel test sessions install once
        if not binary.exists():
            for name in ("package.json", "package-lock.json"):
                (folder / name).write_bytes((S3RVER_PROJECT / name).read_bytes())
            # s3rver's executable starts with `#!/usr/bin/env node`.
            node = debian_binary("nodejs", "node")
            npm = debian_binary("npm", "npm")
            if node is None or npm is None:
                raise RuntimeError(
                    "Node.js or npm is missing: install the Debian packages nodejs and npm"
                )
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=folder,
                check=True,
                capture_output=True,
                timeout=300,
            )
    return binary
