"""The main flow: one image-to-video request through the whole pipeline.

    request ─► download model ─► resolve environment ─► GPU job ─► postprocess ─► upload

Tasks are thin: the work happens in the stack's blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import httpx
from gpuflow_progress import Output, Progress, parse_line
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, State, TaskRun
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from blocks.compute import JobResult, JobSpec
from blocks.environment import ResolvedEnv, console_script
from blocks.model_cache import CachedModel
from blocks.object_store import ObjectUri
from blocks.postprocess_job import run_postprocess
from blocks.stack import GpuflowStack
from gpuflow.admission import Ticket, admitted
from gpuflow.capacity import check_gpu_capacity
from gpuflow.errors import GpuflowError, JobFailedError
from gpuflow.events import GpuflowEvent, emit_run_event
from gpuflow.gpu_slots import held_gpu_slots
from gpuflow.job_registry import RunningJob
from gpuflow.request import Priority, VideoRequest
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
        request.model, stack.models_store, stack.model_source(request.model)
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
    logger = get_run_logger()
    logger.info(
        "%s environment %s at %s",
        "Built" if resolved.built else ("Reusing pinned" if resolved.pinned else "Reusing"),
        resolved.key,
        resolved.root,
    )
    if resolved.link_mode == "copy":
        logger.warning(
            "Environment %s was built by copying packages, not hardlinking", resolved.key
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
        gpu_type=request.gpu_type,
        timeout_s=stack.job_timeout_s,
    )


@task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_if_retryable
)
async def run_gpu_job(
    stack: GpuflowStack, job: JobSpec, limits: list[str], priority: Priority = Priority.NORMAL
) -> JobResult:
    """Wait for admission, hold ``job.gpus`` slots of the GPU limits while the job runs."""
    logger = get_run_logger()
    progress = _ProgressReporter(job.name, logger)
    await progress.start()

    async def on_line(line: str) -> None:
        event = parse_line(line)
        if isinstance(event, Progress):
            if await progress.update(event):
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

    task_run = TaskRunContext.get()
    run_id = flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id) if task_run else None
    capacity = await check_gpu_capacity(limits, job.gpus)
    async with contextlib.AsyncExitStack() as held:
        if stack.fair_admission:
            ticket = Ticket(tuple(limits), job.gpus, priority, holder=str(run_id or job.name))
            waited = await held.enter_async_context(
                admitted(stack.admission_queue(), ticket, capacity, ttl_s=stack.admission_ttl_s)
            )
            logger.info("Admitted after %.1fs (priority %s)", waited, Priority(priority).value)
        lease = await held.enter_async_context(
            held_gpu_slots(limits, job.gpus, stack.gpu_lease_s, holder)
        )
        logger.info("Holding %d slot(s) of %s", job.gpus, ", ".join(limits))
        emit_run_event(GpuflowEvent.GPU_ADMITTED, job.workdir.name, job=job.name)
        record = RunningJob.here(str(lease.lease_id), limits, job.gpus, job.name, run_id)
        with stack.job_registry.recorded(record):
            emit_run_event(GpuflowEvent.JOB_STARTED, job.workdir.name, job=job.name)
            result = await stack.compute.run(job, on_line)
    if result.exit_code != 0:
        raise JobFailedError(result.exit_code, "\n".join(result.last_lines[-5:]))
    await progress.finish()
    return result


class _ProgressReporter:
    """The job's progress artifact; best effort, so a Prefect server restart while the job
    runs loses a few progress updates, never the job."""

    def __init__(
        self, job_name: str, logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self.job_name = job_name
        self.logger = logger
        self.artifact_id: UUID | None = None
        self.last_update = 0.0

    async def _call(self, update: Coroutine[Any, Any, object]) -> object:
        try:
            return await update
        except (httpx.HTTPError, OSError) as exc:
            self.logger.warning("Progress not reported (%s)", exc)
            return None

    async def start(self) -> None:
        created = await self._call(
            acreate_progress_artifact(0.0, description=f"{self.job_name}: waiting for GPUs")
        )
        self.artifact_id = created if isinstance(created, UUID) else None

    async def update(self, event: Progress) -> bool:
        """Report ``event`` unless one was reported moments ago; True when it was."""
        now = time.monotonic()
        if self.artifact_id is None or (
            now - self.last_update < _PROGRESS_INTERVAL_S and event.done < event.total
        ):
            return False
        self.last_update = now
        await self._call(
            aupdate_progress_artifact(
                self.artifact_id, event.percent, description=f"{self.job_name}: {event.message}"
            )
        )
        return True

    async def finish(self) -> None:
        if self.artifact_id is not None:
            await self._call(
                aupdate_progress_artifact(
                    self.artifact_id, 100.0, description=f"{self.job_name}: done"
                )
            )


@task(cache_policy=NO_CACHE, retries=1, retry_condition_fn=_retry_if_retryable)
async def postprocess(stack: GpuflowStack, raw: Path, workspace: Workspace) -> Path:
    """Watermark and transcode the raw video (CPU only), here or on the stack's target."""
    destination = workspace.output_path(OUTPUT_NAME)
    if stack.postprocess_compute is None:
        return await asyncio.to_thread(stack.watermark.apply, raw, destination)
    logger = get_run_logger()

    async def on_line(line: str) -> None:
        logger.info("%s", line)

    return await run_postprocess(
        stack.postprocess_compute, stack.watermark, raw, destination, workspace.root, on_line
    )


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
            {"item": name, "value": seconds, "unit": "s"} for name, seconds in self.steps.items()
        ]
        rows += [
            {"item": "total", "value": round(sum(self.steps.values()), 3), "unit": "s"},
            {"item": "gpu", "value": round(self.gpu_seconds, 3), "unit": "GPU-s"},
            {"item": "downloaded", "value": self.bytes_in, "unit": "bytes"},
            {"item": "uploaded", "value": self.bytes_out, "unit": "bytes"},
        ]
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
    holds = ExitStack()  # keeps GC away from the model and env until the job is done
    try:
        with costs.step("stage_inputs"):
            image = stage_inputs(pipeline, request, workspace)
        # Marks the model in use until the job ends: the cache's LRU eviction skips it.
        holds.enter_context(pipeline.model_cache.hold(request.model))
        with costs.step("download_model"):
            model = download_model(pipeline, request)
        costs.bytes_in = image.stat().st_size + model.bytes_downloaded
        with costs.step("resolve_environment"):
            env = resolve_environment(pipeline, request)
        holds.enter_context(pipeline.environments.hold(env.key))
        job = i2v_job_spec(pipeline, request, env, model, image, workspace)
        emit_run_event(
            GpuflowEvent.RUN_QUEUED, run_id, job=job.name, payload={"gpus": request.gpus}
        )
        with costs.step("run_gpu_job"):
            result = await run_gpu_job(pipeline, job, limits, request.priority)
        costs.gpu_seconds = result.duration_s * request.gpus
        with costs.step("postprocess"):
            video = await postprocess(pipeline, workspace.output_path("raw.mp4"), workspace)
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
    finally:
        holds.close()
    workspace.remove()
    emit_run_event(GpuflowEvent.RUN_COMPLETED, run_id, payload={"output_uri": uri})

    await acreate_link_artifact(uri, link_text=f"{request.resolution} video", description="Result")
    await acreate_table_artifact(costs.table(), description="Wall time per step and run costs")
    print(f"Video ready: {uri}")
    return uri
