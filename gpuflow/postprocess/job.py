"""Postprocessing: a stack's steps run in order, in the flow's process or as one job on a
compute target (e.g. a Fargate task: CPU-only work with nothing to keep warm).

As a job, this module runs with the steps' settings as JSON and two NAS paths; the
container image must hold gpuflow (the image the flows run in does). Exit codes follow
the job convention: 1 for a bad step setting (a missing logo), 4 when a step fails or
times out, so the flow's retry rules apply unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from gpuflow_progress import ExitCode

from gpuflow.compute.base import ComputeTarget, JobSpec, LineHandler
from gpuflow.core.errors import JobFailedError, RequestError
from gpuflow.postprocess.base import PostprocessError, PostprocessStep
from gpuflow.postprocess.steps import step_type

MODULE = "gpuflow.postprocess.job"


def apply_steps(steps: Sequence[PostprocessStep], source: Path, destination: Path) -> Path:
    """Run ``steps`` in order, each on the previous one's output; ``destination`` appears
    only once the last one succeeded (with no steps, it is a copy of ``source``)."""
    if not steps:
        partial = destination.with_name(f".{destination.name}.partial")
        shutil.copyfile(source, partial)
        partial.replace(destination)
        return destination
    scratch = destination.with_name(f".{destination.name}.steps")
    scratch.mkdir(exist_ok=True)
    try:
        current = source
        for index, step in enumerate(steps):
            last = index == len(steps) - 1
            output = destination if last else scratch / f"{index}{destination.suffix}"
            current = step.apply(current, output)
        return current
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def encode_steps(steps: Sequence[PostprocessStep]) -> str:
    """The steps as JSON for the job's command line: each step's type and its settings."""
    return json.dumps(
        [
            {
                "type": step.get_block_type_slug(),
                "settings": json.loads(step.model_dump_json(include=set(type(step).model_fields))),
            }
            for step in steps
        ]
    )


def decode_steps(text: str) -> list[PostprocessStep]:
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError("the steps must be a JSON list")
    return [step_type(item["type"]).model_validate(item["settings"]) for item in items]


def postprocess_job_spec(
    compute: ComputeTarget,
    steps: Sequence[PostprocessStep],
    raw: Path,
    destination: Path,
    workdir: Path,
) -> JobSpec:
    """The job that runs ``steps`` from ``raw`` to ``destination`` (both on the NAS)."""
    # ``--steps=`` and ``--`` keep every value an argument, never an option.
    argv = [compute.gpuflow_python, "-m", MODULE, f"--steps={encode_steps(steps)}"]
    return JobSpec(
        name=f"postprocess-{workdir.name}",
        argv=[*argv, "--", str(raw), str(destination)],
        workdir=workdir,
        gpus=0,
        timeout_s=sum(step.timeout_s for step in steps) + 60.0,
    )


async def run_postprocess(
    compute: ComputeTarget,
    steps: Sequence[PostprocessStep],
    raw: Path,
    destination: Path,
    workdir: Path,
    on_line: LineHandler,
) -> Path:
    """Run the postprocess job on ``compute``; ``destination`` exists when it returns."""
    result = await compute.run(
        postprocess_job_spec(compute, steps, raw, destination, workdir), on_line
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
    parser.add_argument("--steps", required=True, help="The steps and their settings as JSON.")
    parser.add_argument("raw", type=Path)
    parser.add_argument("destination", type=Path)
    arguments = parser.parse_args(argv)
    try:
        apply_steps(decode_steps(arguments.steps), arguments.raw, arguments.destination)
    except (RequestError, ValueError, KeyError) as error:
        print(f"postprocess: {error}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    except PostprocessError as error:
        print(f"postprocess: {error}", file=sys.stderr)
        return int(ExitCode.RESOURCE_ERROR)
    print(f"postprocess: wrote {arguments.destination}")
    return int(ExitCode.SUCCESS)


if __name__ == "__main__":
    sys.exit(main())
