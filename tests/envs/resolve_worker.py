"""Resolves one job's env in a process of its own, as a concurrent run would.

``python -m tests.envs.resolve_worker NAS_ROOT JOB_DIR`` prints ``resolving`` once
it is about to resolve, then one JSON line with the result (or the error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.envs.catalog import EnvCatalog


def main() -> None:
    nas_root, job_dir = Path(sys.argv[1]), Path(sys.argv[2])
    fabric = EnvCatalog(root=nas_root, build_timeout_s=120)
    print("resolving", flush=True)
    try:
        env = fabric.resolve(job_dir)
    except EnvironmentBuildError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        sys.exit(1)
    print(json.dumps({"key": env.key, "built": env.built, "python": str(env.python)}), flush=True)


if __name__ == "__main__":
    main()
