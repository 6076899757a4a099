"""The main flow: one image-to-video request through the whole pipeline.

    request ─► download model ─► resolve environment ─► GPU job ─► postprocess ─► upload

Tasks are thin: the work happens in the stack's blocks and in ``gpuflow.gpu.hold``.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path
from typing import cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, State, TaskRun
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from gpuflow.compute.base import JobResult, JobSpec
from gpuflow.core.errors import GpuflowError, JobFailedError
from gpuflow.core.events import GpuflowEvent, emit_run_event
from gpuflow.core.request import Priority, VideoRequest, parse_request
from gpuflow.core.workspace import Workspace, run_id_for
from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.gpu.capacity import check_gpu_capacity
from gpuflow.pipeline.costs import RunCosts
from gpuflow.pipeline.input_image import check_input_image
from gpuflow.pipeline.job_contract import OUTPUT_NAME, RAW_OUTPUT, job_spec
from gpuflow.pipeline.progress import ProgressReporter, job_line_handler
from gpuflow.pipeline.result import ResultLink, costs_key, result_markdown, video_key
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.postprocess.job import apply_steps, run_postprocess
from gpuflow.storage.model_cache import CachedModel
from gpuflow.storage.uri import ObjectUri


def _retry_if_retryable(task: object, task_run: TaskRun, state: State) -> bool:
    """Retry resource and infrastructure failures only (the job exit-code classes)."""
    # Prefect hands the condition a Failed state whose data is the raised exception.
    error = state.data
    return isinstance(error, GpuflowError) and error.retryable


@task(cache_policy=NO_CACHE)
def stage_inputs(stack: GpuflowStack, request: VideoRequest, workspace: Workspace) -> Path:
    """Copy the input image into the run's workspace under a safe name, and check it."""
    name = ObjectUri.parse(request.image_uri).name or "input-image"
    destination = workspace.input_path(name)
    stack.store_for(request.image_uri).download(request.image_uri, destination)
    check_input_image(destination, request.image_uri)
    return destination


@task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_if_retryable
)
def download_model(stack: GpuflowStack, request: VideoRequest) -> CachedModel:
    """Fill the NAS model cache (once, whatever the number of runs asking)."""
    source = stack.model_source(request.model)
    cached = stack.model_cache.ensure(request.model, stack.store_for(source), source)
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


@task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_if_retryable
)
async def run_gpu_job(
    stack: GpuflowStack, job: JobSpec, priority: Priority = Priority.NORMAL
) -> JobResult:
    """Wait for admission, hold ``job.gpus`` slots of the GPU limits while the job runs."""
    logger = get_run_logger()
    context = TaskRunContext.get()
    holder = ConcurrencyLeaseHolder(type="task_run", id=context.task_run.id) if context else None
    run_id = flow_run.get_id()
    async with ProgressReporter(job.name, logger) as progress:
        async with stack.hold_gpus(job, priority, run_id, holder) as hold:
            if stack.fair_admission:
                logger.info("Admitted after %.1fs (priority %s)", hold.waited_s, priority.value)
            logger.info("Holding %d slot(s) of %s", job.gpus, ", ".join(hold.lease.names))
            emit_run_event(GpuflowEvent.JOB_STARTED, job.workdir.name, job=job.name)
            lines = job_line_handler(job, progress, logger)
            try:
                result = await stack.compute.run(job, lines)
            finally:
                lines.close()
        if result.exit_code != 0:
            raise JobFailedError(result.exit_code, "\n".join(result.last_lines[-5:]))
        await progress.finish()
    return result


@task(cache_policy=NO_CACHE, retries=1, retry_condition_fn=_retry_if_retryable)
async def postprocess(stack: GpuflowStack, raw: Path, workspace: Workspace) -> Path:
    """Run the stack's postprocess steps on the raw video (CPU only), here or on its target."""
    destination = workspace.output_path(OUTPUT_NAME)
    if stack.postprocess_compute is None:
        return await asyncio.to_thread(apply_steps, stack.postprocess, raw, destination)
    logger = get_run_logger()

    async def on_line(line: str) -> None:
        logger.info("%s", line)

    return await run_postprocess(
        stack.postprocess_compute, stack.postprocess, raw, destination, workspace.root, on_line
    )


@task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_if_retryable
)
def upload(stack: GpuflowStack, video: Path, run_id: str) -> str:
    """Put the final video under the run's prefix in the object store."""
    uri = stack.output_uri(run_id, video.name)
    stack.object_store.upload(video, uri)
    return uri


def _result_link(pipeline: GpuflowStack, uri: str) -> ResultLink | None:
    """The presigned link to the result, where the store signs one; a store that cannot sign
    (no credentials) leaves the artifact with the URI, the video being uploaded already."""
    expires_s = pipeline.result_link_expiry_s
    if not expires_s:
        return None
    try:
        url = pipeline.object_store.share_url(uri, expires_s)
    except GpuflowError as exc:
        get_run_logger().warning("No download link for %s: %s", uri, exc)
        return None
    return ResultLink.valid_for(url, expires_s) if url else None


# Parameters are validated in the body, not by Prefect before it: Prefect's failed validation
# reaches neither the run's logs nor (with the field named) the UI, a RequestError raised here
# reaches both. The schema of the annotations still renders the form and is enforced by
# deployments when a run is created.
@flow(name="generate-video", log_prints=True, validate_parameters=False)
async def generate_video(request: VideoRequest, stack: str = "default") -> str:
    """Turn one image and a prompt into a watermarked MP4 in the object store.

    Args:
        request: What to generate (prompt, input image URI, resolution, frames, ...).
        stack: Name of the saved gpuflow-stack block that says where things run, e.g. default.
    """
    request = parse_request(request)
    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    # Refuse what can never run before anything is downloaded or any GPU is held.
    await check_gpu_capacity(pipeline.gpu_limits(request.gpu_type), request.gpus)
    pipeline.store_for(request.image_uri)
    if not pipeline.model_cache.is_ready(request.model):
        source = pipeline.model_source(request.model)
        pipeline.model_cache.require_source(pipeline.store_for(source), source)

    run_id = run_id_for(flow_run.get_id())
    workspace = Workspace.create(pipeline.nas_root, run_id)
    costs = RunCosts()
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
        job = job_spec(
            request,
            pipeline.job_dir(request.job),
            env,
            model,
            image,
            workspace,
            pipeline.job_timeout_s,
        )
        emit_run_event(
            GpuflowEvent.RUN_QUEUED, run_id, job=job.name, payload={"gpus": request.gpus}
        )
        with costs.step("run_gpu_job"):
            result = await run_gpu_job(pipeline, job, request.priority)
        costs.gpu_seconds = result.duration_s * request.gpus
        with costs.step("postprocess"):
            video = await postprocess(pipeline, workspace.output_path(RAW_OUTPUT), workspace)
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

    await acreate_markdown_artifact(
        result_markdown(uri, f"{request.resolution} video", _result_link(pipeline, uri)),
        key=video_key(request.job),
        description=f"Result: {uri}",
    )
    await acreate_table_artifact(
        costs.table(), key=costs_key(request.job), description="Wall time per step and run costs"
    )
    print(f"Video ready: {uri}")
    return uri
