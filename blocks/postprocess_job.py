"""Postprocess as a job: the watermark step run by any compute target.

A stack may run postprocess in the flow's own process (the default) or hand it to a
compute target, e.g. a Fargate task: CPU-only work with nothing to keep warm. The job
is this module run with the Watermark block's settings as JSON and two NAS paths; the
container image must hold gpuflow (the image the flows run in does).

Exit codes follow the job convention: 1 for a bad watermark setting (a missing logo),
4 when ffmpeg fails or times out, so the flow's retry rules apply unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from gpuflow_progress import ExitCode

from blocks.compute import ComputeTarget, JobSpec, LineHandler
from blocks.local import LocalSubprocess
from blocks.watermark import PostprocessError, Watermark
from gpuflow.errors import JobFailedError, RequestError

MODULE = "blocks.postprocess_job"


def postprocess_job_spec(
    compute: ComputeTarget, watermark: Watermark, raw: Path, destination: Path, workdir: Path
) -> JobSpec:
    """The job that watermarks ``raw`` into ``destination`` (both on the NAS)."""
    # Locally the job runs with this very interpreter; in a container, with the image's.
    python = sys.executable if isinstance(compute, LocalSubprocess) else "python"
    settings = watermark.model_dump_json(include=set(Watermark.model_fields))
    return JobSpec(
        name=f"postprocess-{workdir.name}",
        argv=[python, "-m", MODULE, "--watermark", settings, str(raw), str(destination)],
        workdir=workdir,
        gpus=0,
        timeout_s=watermark.timeout_s + 60.0,
    )


async def run_postprocess(
    compute: ComputeTarget,
    watermark: Watermark,
    raw: Path,
    destination: Path,
    workdir: Path,
    on_line: LineHandler,
) -> Path:
    """Run the postprocess job on ``compute``; ``destination`` exists when it returns."""
    result = await compute.run(
        postprocess_job_spec(compute, watermark, raw, destination, workdir), on_line
    )
    if result.exit_code != 0:
        raise JobFailedError(result.exit_code, "\n".join(result.last_lines[-5:]))
    if not await asyncio.to_thread(destination.is_file):
        raise PostprocessError(
            f"postprocess job exited 0 but wrote no {destination} (is the NAS mounted at the "
            "same path in the job?)"
        )
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--watermark", required=True, help="Watermark settings as JSON.")
    parser.add_argument("raw", type=Path)
    parser.add_argument("destination", type=Path)
    arguments = parser.parse_args(argv)
    try:
        watermark = Watermark.model_validate_json(arguments.watermark)
        watermark.apply(arguments.raw, arguments.destination)
    except (RequestError, ValueError) as error:
        print(f"postprocess: {error}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    except PostprocessError as error:
        print(f"postprocess: {error}", file=sys.stderr)
        return int(ExitCode.RESOURCE_ERROR)
    print(f"postprocess: wrote {arguments.destination}")
    return int(ExitCode.SUCCESS)


if __name__ == "__main__":
    sys.exit(main())
