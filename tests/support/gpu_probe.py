"""A tiny GPU job run through gpuflow's real GPU step (``run_gpu_job``): the admission
tests, the benchmark and the flow processes they start use it.

The job records, in ``<record_dir>/<name>.json``, when it started and ended (its own
clock), its pid and its ``CUDA_VISIBLE_DEVICES``; the flow records when it started.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from prefect import flow

from gpuflow.compute.base import JobSpec
from gpuflow.core.request import Priority
from gpuflow.pipeline.generate_video import run_gpu_job
from gpuflow.pipeline.stack import GpuflowStack

# Writes a start record at once (pid, devices), waits while <name>.hold exists (a test's
# handle on how long the job runs), sleeps, then writes the full record.
PROBE_JOB = """
import json, os, sys, time
record_dir, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
started = time.time()
record = {"name": name, "pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
          "started": started}
with open(os.path.join(record_dir, name + ".start"), "w") as out:
    json.dump(record, out)
hold = os.path.join(record_dir, name + ".hold")
while os.path.exists(hold):
    time.sleep(0.1)
time.sleep(seconds)
record["ended"] = time.time()
with open(os.path.join(record_dir, name + ".json"), "w") as out:
    json.dump(record, out)
"""


def probe_spec(name: str, gpus: int, seconds: float, record_dir: Path) -> JobSpec:
    return JobSpec(
        name=name,
        argv=[sys.executable, "-c", PROBE_JOB, str(record_dir), name, str(seconds)],
        workdir=record_dir,
        gpus=gpus,
    )


@flow(name="gpu-probe")
async def gpu_probe(
    stack: str,
    name: str,
    gpus: int,
    seconds: float,
    record_dir: str,
    priority: Priority = Priority.NORMAL,
) -> dict[str, Any]:
    """Run one probe job under the stack's GPU limit, the way ``generate_video`` does."""
    flow_started = time.time()
    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    result = await run_gpu_job(
        pipeline, probe_spec(name, gpus, seconds, Path(record_dir)), priority
    )
    return {"flow_started": flow_started, "exit_code": result.exit_code}


def read_records(record_dir: Path) -> dict[str, dict[str, Any]]:
    """The finished jobs' records by name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(record_dir.glob("*.json"))}


def start_record(record_dir: Path, name: str, timeout_s: float = 120) -> dict[str, Any]:
    """The job's start record, once the job has started."""
    path = record_dir / f"{name}.start"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            record: dict[str, Any] = json.loads(path.read_text())
            return record
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {name} did not start within {timeout_s:.0f}s") from None
            time.sleep(0.05)
