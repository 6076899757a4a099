"""Janitor pass over 10,000 workspaces: gpuflow's scan and API check against naive baselines.

    uv run python benchmarks/janitor_scan.py [--workspaces 10000] [--no-server]

Builds NAS/workspaces/<uuid>/{inputs,outputs} with one small file each (5% carry a failure
marker), then measures in this one run:

* scan: ``scan_workspaces`` (one scandir, a stat and a marker read each) beside a pathlib
  walk that stats every file (what ``du`` plus a marker check costs);
* full pass (dry run, so the same tree is measured each time): ``clean_workspaces`` against
  a real local Prefect server (started here), all workspaces old enough to be candidates,
  beside the naive API check, one ``read_flow_run`` per workspace, measured on a sample.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from gpuflow.core.workspace import FAILURE_MARKER, Workspace
from gpuflow.ops.local_server import ensure_server, stop_server
from gpuflow.pipeline.housekeeping import clean_workspaces, scan_workspaces

_NAIVE_SAMPLE = 300


def build_tree(nas: Path, count: int) -> None:
    old = time.time() - 48 * 3600
    for index in range(count):
        workspace = Workspace.create(nas, str(uuid.uuid4()))
        workspace.output_path("raw.mp4").write_bytes(b"x" * 512)
        if index % 20 == 0:
            workspace.keep_after_failure(-1, "JobFailedError")
        os.utime(workspace.root, (old, old))


def naive_scan(root: Path) -> int:
    found = 0
    for directory in root.iterdir():
        if directory.is_dir():
            sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
            (directory / FAILURE_MARKER).exists()
            found += 1
    return found


def best_of(repeats: int, action: Callable[[], object]) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


async def naive_api_check(run_ids: list[str]) -> None:
    async with get_client() as client:
        for run_id in run_ids:
            try:
                await client.read_flow_run(uuid.UUID(run_id))
            except ObjectNotFound:
                continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=10_000)
    parser.add_argument("--no-server", action="store_true", help="Measure the scan only.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuflow-janitor-bench-") as scratch:
        nas = Path(scratch) / "nas"
        started = time.perf_counter()
        build_tree(nas, args.workspaces)
        print(f"built {args.workspaces} workspaces in {time.perf_counter() - started:.1f}s")
        root = nas / "workspaces"
        ours = best_of(3, lambda: scan_workspaces(root))
        naive = best_of(3, lambda: naive_scan(root))
        print(f"{'measure':<44} {'seconds':>9}")
        print(f"{'scan: gpuflow scan_workspaces':<44} {ours:>9.3f}")
        print(f"{'scan: baseline pathlib walk + stat':<44} {naive:>9.3f}")
        if args.no_server:
            return
        state = Path(scratch) / "state"
        server, _ = ensure_server(state)
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                passes = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    cleanup = asyncio.run(clean_workspaces(nas, 24 * 3600, dry_run=True))
                    passes.append(time.perf_counter() - t0)
                assert cleanup.removed == args.workspaces, cleanup
                sample = [entry.run_id for entry in scan_workspaces(root).entries][:_NAIVE_SAMPLE]
                t0 = time.perf_counter()
                asyncio.run(naive_api_check(sample))
                per_run = (time.perf_counter() - t0) / len(sample)
            label = f"full pass: gpuflow clean_workspaces ({args.workspaces})"
            print(f"{label:<44} {min(passes):>9.3f}  (median {statistics.median(passes):.3f})")
            label = f"API check: baseline 1 call/run ({len(sample)} measured)"
            print(f"{label:<44} {per_run * len(sample):>9.3f}")
            label = f"  -> baseline projected to {args.workspaces}"
            print(f"{label:<44} {per_run * args.workspaces:>9.3f}")
        finally:
            stop_server(state)


if __name__ == "__main__":
    main()
