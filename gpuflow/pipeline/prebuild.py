"""Build job environments ahead of time, so no run waits for one.

A run resolves its env in well under a millisecond when this flow (or
``gpuflow env build``) built it already. Schedule it (``serve`` below, or a
deployment with an interval) or trigger it when a job changes: when nothing
changed it only compares file stats and returns.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from gpuflow.core.errors import EnvironmentBuildError, RequestError
from gpuflow.pipeline.stack import GpuflowStack


def job_names(stack: GpuflowStack) -> list[str]:
    """The job projects under the stack's jobs root (a directory with a uv lock)."""
    root = stack.jobs_root
    return sorted(
        p.name
        for p in root.iterdir()
        if (p / "pyproject.toml").is_file() and (p / "uv.lock").is_file()
    )


@task(cache_policy=NO_CACHE)
def build_environment(stack: GpuflowStack, job: str) -> dict[str, object]:
    """Build one job's env if its sources changed; report what happened."""
    logger = get_run_logger()
    started = time.monotonic()
    env = stack.environments.ensure(stack.job_dir(job), job)
    seconds = round(time.monotonic() - started, 3)
    logger.info(
        "%s env %s of job %s (%.2fs)", "Built" if env.built else "Ready", env.key, job, seconds
    )
    if env.link_mode == "copy":
        logger.warning(
            "env %s was built by COPYING packages: put the uv cache %s on the filesystem of %s",
            env.key,
            stack.environments.uv_cache_dir,
            stack.environments.envs_dir,
        )
    return {
        "job": job,
        "key": env.key,
        "built": env.built,
        "link_mode": env.link_mode,
        "seconds": seconds,
    }


@flow(name="prebuild-environments")
def prebuild_environments(
    stack: str = "default", jobs: list[str] | None = None
) -> list[dict[str, object]]:
    """Build the environments of the stack's jobs (all of them unless ``jobs`` names some).

    Args:
        stack: Name of the saved gpuflow-stack block.
        jobs: Job names (directories under the stack's jobs root); empty means every job.
    """
    pipeline = cast(GpuflowStack, GpuflowStack.load(stack))
    available = job_names(pipeline)
    names = jobs or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise RequestError(
            f"unknown job(s) {unknown} under {pipeline.jobs_root} (jobs there: {available})"
        )
    results: list[dict[str, object]] = []
    failures: list[str] = []
    for name in names:
        try:
            results.append(build_environment(pipeline, name))
        except EnvironmentBuildError as exc:  # one broken job must not block the others
            failures.append(f"job {name}: {exc}")
    if results:
        create_table_artifact(results, key="prebuilt-environments", description="Prebuilt envs")
    if failures:
        raise EnvironmentBuildError(
            f"{len(failures)} of {len(names)} environments failed to build", "\n".join(failures)
        )
    return results


if __name__ == "__main__":
    # Re-check every job every five minutes; an unchanged job costs a few stat calls.
    prebuild_environments.serve(name="prebuild-environments", interval=timedelta(minutes=5))
