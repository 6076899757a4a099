"""The main flow: one image-to-video request through the whole pipeline.

    request ─► download model ─► resolve environment ─► GPU job ─► postprocess ─► upload

Tasks are thin: the work happens in the stack's blocks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from gpuflow_progress import Output, Progress, parse_line
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import concurrency
from prefect.runtime import flow_run

from blocks.compute import JobResult, JobSpec
from blocks.environment import ResolvedEnv, console_script
from blocks.model_cache import CachedModel
from blocks.object_store import ObjectUri
from blocks.stack import GpuflowStack
from gpuflow.capacity import check_gpu_capacity
from gpuflow.errors import GpuflowError, JobFailedError
from gpuflow.events import GpuflowEvent, emit_run_event
from gpuflow.request import VideoRequest
from gpuflow.submission import OUTPUT_NAME
from gpuflow.workspace import Workspace

_PROGRESS_INTERVAL_S = 0.5


def _retry_if_retryable(task: object, task_run: TaskRun, state: State) -> bool:
    """Retry resource and infrastructure failures only (DESIGN.md's exit-code classes)."""
    # Prefect hands the condition a Failed state whose data is the raised exception.
    error = state.data
    return isinstance(error, GpuflowError) and error.retryable


@task(cache_policy=NO_CACHE)
def stage_inputs(stack: GpuflowStack, request: VideoRequest, workspace: Workspace) -> Path:
    """Copy the input image into the run's workspace under a safe name."""
    name = ObjectUri.parse(request.image_uri).name or "input-image"
    destination = workspace.input_path(name)
    stack.object_store.download(request.image_uri, destination)
    return destination


@task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_if_retryable
)
def download_model(stack: GpuflowStack, request: VideoRequest) -> CachedModel:
    """Fill the NAS model cache (once, whatever the number of runs asking)."""
    cached = stack.model_cache.ensure(
        request.model, stack.object_store, stack.model_source(request.model)
    )
    logger = get_run_logger()
    if cached.downloaded:
        logger.info(
            "Downloaded %s (%d bytes) to %s", request.model, cached.bytes_downloaded, cached.path
        )
    else:
        logger.info("Model %s is cached and verified at %s", request.model, cached.path)
    return cached


@task(cache_policy=NO_CACHE)
def resolve_environment(stack: GpuflowStack, request: VideoRequest) -> ResolvedEnv:
    """The job's prebuilt uv environment (built now only if nobody built it before)."""
    resolved = stack.environments.resolve(stack.job_dir(request.job))
    get_run_logger().info(
        "%s environment %s at %s",
        "Built" if resolved.built else "Reusing",
        resolved.key,
        resolved.root,
    )
    return resolved


def i2v_job_spec(
    stack: GpuflowStack,
    request: VideoRequest,
    env: ResolvedEnv,
    model: CachedModel,
    image: Path,
    workspace: Workspace,
) -> JobSpec:
    """The reference I2V job's command line; every value is one argv element, verbatim."""
    argv = [
        str(env.script(console_script(stack.job_dir(request.job)))),
        "--model-dir", str(model.path),
        "--image", str(image),
        "--prompt", request.prompt,
        "--width", str(request.width),
        "--height", str(request.height),
        "--frames", str(request.num_frames),
        "--fps", str(request.fps),
        "--seed", str(request.seed),
        "--output", str(workspace.output_path("raw.mp4")),
    ]  # fmt: skip
    return JobSpec(
        name=f"{request.job}-{workspace.root.name}",
        argv=argv,
        workdir=workspace.root,
        gpus=request.gpus,
        timeout_s=stack.job_timeout_s,
    )


@task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_if_retryable
)
async def run_gpu_job(stack: GpuflowStack, job: JobSpec, limits: list[str]) -> JobResult:
    """Hold ``job.gpus`` slots of the GPU limits while the job runs; stream its output."""
    logger = get_run_logger()
    artifact_id = await acreate_progress_artifact(0.0, description=f"{job.name}: waiting for GPUs")
    last_update = 0.0

    async def on_line(line: str) -> None:
        nonlocal last_update
        event = parse_line(line)
        if isinstance(event, Progress):
            now = time.monotonic()
            if now - last_update >= _PROGRESS_INTERVAL_S or event.done >= event.total:
                last_update = now
                await aupdate_progress_artifact(
                    artifact_id, event.percent, description=f"{job.name}: {event.message}"
                )
                emit_run_event(
                    GpuflowEvent.JOB_PROGRESS,
                    job.workdir.name,
                    job=job.name,
                    payload={"percent": event.percent, "message": event.message},
                )
        elif isinstance(event, Output):
            logger.info("Job output %s: %s", event.name, event.path)
        elif event is None:
            logger.info("%s", line)

    async with concurrency(limits, occupy=job.gpus, strict=True, lease_duration=stack.gpu_lease_s):
        logger.info("Holding %d slot(s) of %s", job.gpus, ", ".join(limits))
        emit_run_event(GpuflowEvent.GPU_ADMITTED, job.workdir.name, job=job.name)
        emit_run_event(GpuflowEvent.JOB_STARTED, job.workdir.name, job=job.name)
        result = await stack.compute.run(job, on_line)
    if result.exit_code != 0:
        raise JobFailedError(result.exit_code, "\n".join(result.last_lines[-5:]))
    await aupdate_progress_artifact(artifact_id, 100.0, description=f"{job.name}: done")
    return result


@task(cache_policy=NO_CACHE, retries=1, retry_condition_fn=_retry_if_retryable)
def postprocess(stack: GpuflowStack, raw: Path, workspace: Workspace) -> Path:
    """Watermark and transcode the raw video (CPU only)."""
    return stack.watermark.apply(raw, workspace.output_path(OUTPUT_NAME))


@task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_if_retryable
)
def upload(stack: GpuflowStack, video: Path, run_id: str) -> str:
    """Put the final video under the run's prefix in the object store."""
    uri = stack.output_uri(run_id, video.name)
    stack.object_store.upload(video, uri)
    return uri


@dataclass
class _Costs:
    """Wall time per step, GPU-seconds and bytes moved: the run's bill."""

    steps: dict[str, float] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - started, 3)

    def table(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {"step": name, "wall_s": seconds} for name, seconds in self.steps.items()
        ]
        rows.append({"step": "total", "wall_s": round(sum(self.steps.values()), 3)})
        rows.append({"step": "gpu_seconds", "wall_s": round(self.gpu_seconds, 3)})
        rows.append({"step": "bytes_downloaded", "wall_s": self.bytes_in})
        rows.append({"step": "bytes_uploaded", "wall_s": self.bytes_out})
        return rows


@flow(name="generate-video", log_prints=True)
async def generate_video(request: VideoRequest, stack: str = "default") -> str:
    """Turn one image and a prompt into a watermarked MP4 in the object store.

    Args:
        request: What to generate (prompt, input image URI, resolution, frames, ...).
        stack: Name of the saved ``gpuflow-stack`` block that says where things run.
    """
    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    limits = pipeline.gpu_limits(request.gpu_type)
    # Refuse what can never run before anything is downloaded or any GPU is held.
    await check_gpu_capacity(limits, request.gpus)
    ObjectUri.parse(request.image_uri)

    run_id = str(flow_run.get_id() or "local")
    workspace = Workspace.create(pipeline.nas_root, run_id)
    costs = _Costs()
    try:
        with costs.step("stage_inputs"):
            image = stage_inputs(pipeline, request, workspace)
        with costs.step("download_model"):
            model = download_model(pipeline, request)
        costs.bytes_in = image.stat().st_size + model.bytes_downloaded
        with costs.step("resolve_environment"):
            env = resolve_environment(pipeline, request)
        job = i2v_job_spec(pipeline, request, env, model, image, workspace)
        emit_run_event(
            GpuflowEvent.RUN_QUEUED, run_id, job=job.name, payload={"gpus": request.gpus}
        )
        with costs.step("run_gpu_job"):
            result = await run_gpu_job(pipeline, job, limits)
        costs.gpu_seconds = result.duration_s * request.gpus
        with costs.step("postprocess"):
            video = postprocess(pipeline, workspace.output_path("raw.mp4"), workspace)
        with costs.step("upload"):
            uri = upload(pipeline, video, run_id)
        costs.bytes_out = video.stat().st_size
    except BaseException as exc:
        # Kept for debugging; the janitor removes it once keep_failed_workspaces_s is over.
        workspace.keep_after_failure(
            pipeline.keep_failed_workspaces_s, f"{type(exc).__name__}: {exc}"
        )
        emit_run_event(
            GpuflowEvent.RUN_FAILED,
            run_id,
            payload={"error": f"{type(exc).__name__}: {exc}"[:2000]},
        )
        raise
    workspace.remove()
    emit_run_event(GpuflowEvent.RUN_COMPLETED, run_id, payload={"output_uri": uri})

    await acreate_link_artifact(uri, link_text=f"{request.resolution} video", description="Result")
    await acreate_table_artifact(costs.table(), description="Wall time per step and run costs")
    print(f"Video ready: {uri}")
    return uri
