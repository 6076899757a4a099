"""Benchmark: 40 jobs of 2 s on 4 GPU slots, with the flows spread over several processes
(as separate flow pods would be), through gpuflow's GPU step (fair admission, leased
slots, device claims, job guard) and through a bare Prefect ``concurrency()`` around the
same job, side by side, on the same Prefect server in the same run.

Prints, for each: the makespan against the ideal (jobs x seconds / slots), when the first
job started after the common start (the burst of flow starts), the idle gap of a slot
between two jobs (p50 / p99 / max: a job's start minus the end of the job that freed its
slot, slots assigned in order of the ends), and the per-job orchestration overhead (flow
start -> job start, warm, with free slots).

    uv run python benchmarks/gpu_admission.py [--jobs 40] [--seconds 2] [--slots 4]
        [--processes 8] [--admission sqlite|postgresql] [--postgres postgres@127.0.0.1:5432]

Every process imports Prefect and runs one warm-up flow before a common start signal, so
the makespan measures admission and the jobs, not imports. The Prefect server runs on a
fresh PostgreSQL database (created and dropped here), as in production: on SQLite, 40
flow runs starting at once on a 2-core machine get "database is locked" (503) from the
server. ``--admission`` picks the queue: the embedded default's SQLite file on the NAS,
or PostgreSQL (the same fresh database).
"""

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import statistics
import subprocess
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
from pydantic import SecretStr

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


PROBES: dict[str, Any] = {"gpuflow": gpu_probe, "bare": bare_probe}


# One flow process -----------------------------------------------------------------------


async def _worker(probe: str, target: str, names: list[str], seconds: float, work: Path) -> None:
    """Warm up (imports, client, one flow), say so, wait for the start signal, run the
    process's share of the jobs concurrently."""
    run = PROBES[probe]
    warm_dir = work / f"warm-{os.getpid()}"
    warm_dir.mkdir()
    await run(target, "warm-up", 0.0, str(warm_dir))
    overheads = []
    for number in range(2):
        result = await run(target, f"single-{number}", 0.0, str(warm_dir))
        record = read_records(warm_dir)[f"single-{number}"]
        overheads.append(record["started"] - result["flow_started"])
    print(json.dumps({"ready": statistics.median(overheads)}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    load_dir = work / "load"
    await asyncio.gather(*(run(target, name, seconds, str(load_dir)) for name in names))
    print(json.dumps({"done": len(names)}), flush=True)


def _spawn(probe: str, target: str, names: list[str], seconds: float, work: Path) -> Any:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", probe, target, str(seconds), str(work), *names],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


# Figures ----------------------------------------------------------------------------------


def slot_gaps(records: dict[str, dict[str, Any]], slots: int) -> list[float]:
    """Per slot: the next job's start minus the previous job's end. Jobs taken in order of
    their start each take the slot that freed first (the first ``slots`` jobs start on
    empty slots and have no gap)."""
    jobs = sorted(records.values(), key=lambda record: record["started"])
    free_since: list[float] = []  # heap of the ends of the jobs on the slots
    gaps = []
    for record in jobs:
        if len(free_since) < slots:
            heapq.heappush(free_since, record["ended"])
            continue
        freed = heapq.heappop(free_since)
        gaps.append(record["started"] - freed)
        heapq.heappush(free_since, record["ended"])
    return gaps


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _said(worker: Any, key: str) -> Any:
    """The next line of ``worker``'s that carries ``key`` (its other output is logs)."""
    for line in worker.stdout:
        if line.startswith("{") and key in (message := json.loads(line)):
            return message[key]
    raise SystemExit(f"a worker exited (code {worker.wait()}) before it said {key!r}")


def _measure(probe: str, target: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    (work / "load").mkdir(parents=True)
    names = [f"job-{number:02d}" for number in range(args.jobs)]
    shares = [names[index :: args.processes] for index in range(args.processes)]
    workers = [_spawn(probe, target, share, args.seconds, work) for share in shares if share]
    overheads = []
    try:
        for worker in workers:
            overheads.append(_said(worker, "ready"))
        started = time.time()
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            if worker.wait() != 0:
                raise SystemExit(f"a {probe} worker failed (exit {worker.returncode})")
    finally:
        for worker in workers:
            worker.kill()
    records = read_records(work / "load")
    assert len(records) == args.jobs, f"{args.jobs - len(records)} jobs lost"
    gaps = slot_gaps(records, args.slots)
    return {
        "makespan": max(record["ended"] for record in records.values()) - started,
        "first start": min(record["started"] for record in records.values()) - started,
        "overhead": statistics.median(overheads),
        "gap p50": percentile(gaps, 0.5),
        "gap p99": percentile(gaps, 0.99),
        "gap max": max(gaps),
    }


async def _prepare(args: argparse.Namespace, layout: EmbeddedLayout, database_url: str) -> Any:
    tag = uuid.uuid4().hex[:6]
    gpuflow_limit, bare_limit = f"gpu-bench-{tag}", f"gpu-bare-{tag}"
    update: dict[str, Any] = {
        "gpu_limit": gpuflow_limit,
        "compute": LocalSubprocess(
            devices=list(range(args.slots)), lock_dir=layout.nas_root / "bench-locks"
        ),
    }
    if args.admission == "postgresql":
        update["admission_url"] = SecretStr(database_url)
    stack = layout.stack().model_copy(update=update)
    await bootstrap(stack, f"bench-{tag}", gpu_slots=args.slots)
    await ensure_gpu_limits({bare_limit: args.slots})
    return f"bench-{tag}", bare_limit


def _benchmark(
    args: argparse.Namespace, layout: EmbeddedLayout, work: Path, database_url: str
) -> None:
    stack_name, bare_limit = asyncio.run(_prepare(args, layout, database_url))
    ideal = args.jobs * args.seconds / args.slots
    results = {
        f"gpuflow (admission: {args.admission})": _measure(
            "gpuflow", stack_name, args, work / "gpuflow"
        ),
        "bare Prefect concurrency()": _measure("bare", bare_limit, args, work / "bare"),
    }
    bare = results["bare Prefect concurrency()"]["makespan"]
    print(
        f"\n{args.jobs} jobs of {args.seconds:g} s on {args.slots} slots, flows in "
        f"{args.processes} processes; ideal makespan {ideal:.1f} s"
    )
    print(
        f"{'':32} {'makespan':>9} {'vs ideal':>9} {'vs bare':>8} {'first job':>10} "
        f"{'slot idle gap p50/p99/max':>27} {'overhead/job':>13}"
    )
    for name, figures in results.items():
        gaps = f"{figures['gap p50']:.2f}/{figures['gap p99']:.2f}/{figures['gap max']:.2f} s"
        print(
            f"{name:32} {figures['makespan']:>8.1f}s {figures['makespan'] / ideal:>8.2f}x "
            f"{figures['makespan'] / bare:>7.2f}x {figures['first start']:>9.1f}s "
            f"{gaps:>27} {figures['overhead']:>12.2f}s"
        )
    print("goals: makespan <= 1.15x ideal and <= 0.80x bare; slot idle gap p99 <= 0.25 s")


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
        yield f"postgresql://{server}/{name}"
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        probe, target, seconds, work, *names = sys.argv[2:]
        asyncio.run(_worker(probe, target, names, float(seconds), Path(work)))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--admission", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--postgres", default="postgres@127.0.0.1:5432", help="user@host:port of PostgreSQL"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="gpuflow-bench-") as scratch,
        _fresh_database(args.postgres) as database_url,
    ):
        state = Path(scratch)
        server_url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        server, _ = ensure_server(state / "server", database_url=server_url)
        os.environ["PREFECT_API_URL"] = server.api_url  # for the worker processes
        try:
            layout = EmbeddedLayout(state)
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                _benchmark(args, layout, state / "work", database_url)
        finally:
            stop_server(state / "server")


if __name__ == "__main__":
    main()
