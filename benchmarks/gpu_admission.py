"""Benchmark: 40 jobs of 2 s on 4 GPU slots, through gpuflow's GPU step (fair admission,
leased slots, device claims, job guard) and through a bare Prefect ``concurrency()`` loop,
side by side, on the same Prefect server in the same run.

Prints the makespan against the ideal (40 x 2 s / 4 = 20 s) and the per-job orchestration
overhead (flow start -> job start, warm, with free slots).

    uv run python benchmarks/gpu_admission.py [--jobs 40] [--seconds 2] [--slots 4]
        [--postgres postgres@127.0.0.1:5432]

The Prefect server runs on a fresh PostgreSQL database (created and dropped here), as in
production: on SQLite, 40 flow runs starting at once on a 2-core machine get
"database is locked" (503) from the server.
"""

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import asyncpg
from prefect import flow
from prefect.concurrency.asyncio import concurrency
from prefect.settings import PREFECT_API_URL, temporary_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuflow.compute.base import JobSpec
from gpuflow.compute.local import LocalSubprocess
from gpuflow.gpu.capacity import ensure_gpu_limits
from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import ensure_server, stop_server
from gpuflow.pipeline.generate_video import run_gpu_job
from gpuflow.pipeline.stack import GpuflowStack

# The job: records when it started and ended (its own clock) under <record_dir>/<name>.json.
PROBE_JOB = """
import json, os, sys, time
record_dir, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
record = {"name": name, "started": time.time()}
time.sleep(seconds)
record["ended"] = time.time()
with open(os.path.join(record_dir, name + ".json"), "w") as out:
    json.dump(record, out)
"""


def read_records(record_dir: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(record_dir.glob("*.json"))}


@flow(name="gpu-probe")
async def gpu_probe(stack: str, name: str, seconds: float, record_dir: str) -> dict[str, Any]:
    """The probe job through gpuflow's GPU step, the way generate-video runs its job."""
    flow_started = time.time()
    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    job = JobSpec(
        name=name,
        argv=[sys.executable, "-c", PROBE_JOB, record_dir, name, str(seconds)],
        workdir=Path(record_dir),
        gpus=1,
    )
    await run_gpu_job(pipeline, job)
    return {"flow_started": flow_started}


@flow(name="bare-concurrency-probe")
async def bare_probe(limit: str, name: str, seconds: float, record_dir: str) -> dict[str, Any]:
    """The baseline: Prefect's own concurrency() around the same job, nothing else."""
    flow_started = time.time()
    async with concurrency(limit, occupy=1, strict=True, lease_duration=60):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE_JOB, record_dir, name, str(seconds)
        )
        await process.wait()
    return {"flow_started": flow_started}


async def _gpuflow_run(stack: str, name: str, seconds: float, record_dir: Path) -> Any:
    return await gpu_probe(stack, name, seconds, str(record_dir))


async def _bare_run(limit: str, name: str, seconds: float, record_dir: Path) -> Any:
    return await bare_probe(limit, name, seconds, str(record_dir))


async def _measure(
    run: Any, target: str, jobs: int, seconds: float, work: Path
) -> dict[str, float]:
    # Warm: the first run in a process pays for imports and client set-up.
    warm_dir = work / "warm"
    warm_dir.mkdir()
    await run(target, "warm-up", 0.0, warm_dir)
    overheads = []
    for number in range(3):
        result = await run(target, f"single-{number}", 0.0, warm_dir)
        overheads.append(
            read_records(warm_dir)[f"single-{number}"]["started"] - result["flow_started"]
        )

    load_dir = work / "load"
    load_dir.mkdir()
    started = time.time()
    await asyncio.gather(*(run(target, f"job-{i:02d}", seconds, load_dir) for i in range(jobs)))
    records = read_records(load_dir)
    assert len(records) == jobs, f"{jobs - len(records)} jobs lost"
    makespan = max(record["ended"] for record in records.values()) - started
    return {"makespan": makespan, "overhead": statistics.median(overheads)}


async def _benchmark(args: argparse.Namespace, layout: EmbeddedLayout, work: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    gpuflow_limit, bare_limit = f"gpu-bench-{tag}", f"gpu-bare-{tag}"
    stack = layout.stack().model_copy(
        update={
            "gpu_limit": gpuflow_limit,
            "compute": LocalSubprocess(
                devices=list(range(args.slots)), lock_dir=layout.nas_root / "bench-locks"
            ),
        }
    )
    await bootstrap(stack, f"bench-{tag}", gpu_slots=args.slots)
    await ensure_gpu_limits({bare_limit: args.slots})
    (work / "gpuflow").mkdir(parents=True)
    (work / "bare").mkdir()
    ideal = args.jobs * args.seconds / args.slots
    results = {
        "gpuflow (fair admission)": await _measure(
            _gpuflow_run, f"bench-{tag}", args.jobs, args.seconds, work / "gpuflow"
        ),
        "bare Prefect concurrency()": await _measure(
            _bare_run, bare_limit, args.jobs, args.seconds, work / "bare"
        ),
    }
    print(f"\n{args.jobs} jobs of {args.seconds:g} s on {args.slots} slots", end="")
    print(f"; ideal makespan {ideal:.1f} s")
    print(f"{'':28} {'makespan':>10} {'vs ideal':>9} {'overhead/job (warm)':>20}")
    for name, figures in results.items():
        over_ideal = 100 * (figures["makespan"] / ideal - 1)
        print(
            f"{name:28} {figures['makespan']:>9.1f}s {over_ideal:>+8.1f}%"
            f" {figures['overhead']:>19.2f}s"
        )


async def _admin(server: str, statement: str) -> None:
    connection = await asyncpg.connect(f"postgresql://{server}/postgres", timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def _fresh_database(server: str) -> Iterator[str]:
    name = f"gpuflow_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{server}/{name}"
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument(
        "--postgres", default="postgres@127.0.0.1:5432", help="user@host:port of PostgreSQL"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="gpuflow-bench-") as scratch,
        _fresh_database(args.postgres) as database_url,
    ):
        state = Path(scratch)
        server, _ = ensure_server(state / "server", database_url=database_url)
        try:
            layout = EmbeddedLayout(state)
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                asyncio.run(_benchmark(args, layout, state / "work"))
        finally:
            stop_server(state / "server")


if __name__ == "__main__":
    main()
