"""Creating runs of a gpuflow deployment through the Prefect API, as the UI does.

A request's priority picks the work queue of the deployment's pool (``high``, ``normal``,
``batch``, created by ``gpuflow bootstrap``), so workers serve urgent runs first.
"""

from __future__ import annotations

import asyncio
import enum
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from gpuflow.core.errors import GpuflowError, NotFoundError, ObjectNotFoundError, UriError
from gpuflow.core.request import VideoRequest
from gpuflow.storage.uri import ObjectUri

# Prefect's client, the stack (which imports every backend) and the job contract are imported
# where they are used: the command line imports this module in commands that must answer at once.
if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse

    from gpuflow.compute.base import JobSpec
    from gpuflow.envs.catalog import ResolvedEnv
    from gpuflow.pipeline.stack import GpuflowStack

DEFAULT_DEPLOYMENT = "generate-video/generate-video-process"


class SubmissionError(GpuflowError):
    """The run could not be created (no such queue, or parameters refused)."""


class DeploymentNotFoundError(SubmissionError, NotFoundError):
    """No deployment of that flow-name/deployment-name on the server."""


async def find_deployment(client: PrefectClient, name: str) -> DeploymentResponse:
    from prefect.exceptions import ObjectNotFound

    try:
        if "/" in name:
            return await client.read_deployment_by_name(name)
        return await client.read_deployment(UUID(name))
    except (ObjectNotFound, ValueError):
        raise DeploymentNotFoundError(
            f"no deployment {name!r} on {client.api_url}: deploy with "
            "`prefect --no-prompt deploy --all` (names look like flow-name/deployment-name)"
        ) from None


def planned_run(
    deployment: DeploymentResponse, request: VideoRequest, stack: str
) -> dict[str, Any]:
    """What a run of ``deployment`` for ``request`` is created with (what a dry run shows)."""
    return {
        "deployment": f"{deployment.name} ({deployment.id})",
        "work_pool": deployment.work_pool_name,
        "work_queue": request.priority.value if deployment.work_pool_name else None,
        "parameters": {"request": request.model_dump(mode="json"), "stack": stack},
    }


async def submit_request(
    client: PrefectClient,
    deployment: DeploymentResponse,
    request: VideoRequest,
    stack: str,
    tags: list[str] | None = None,
) -> FlowRun:
    """One flow run of ``deployment`` for ``request`` on the queue of its priority."""
    from prefect.exceptions import PrefectHTTPStatusError

    planned = planned_run(deployment, request, stack)
    parameters, queue = planned["parameters"], planned["work_queue"]
    try:
        return await client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters, tags=tags or [], work_queue_name=queue
        )
    except PrefectHTTPStatusError as exc:
        status = exc.response.status_code
        detail = exc.response.json().get("detail", exc.response.text)
        if status == 404 and queue:
            raise SubmissionError(
                f"work pool {deployment.work_pool_name!r} has no work queue {queue!r} for "
                f"priority {queue!r}: create the queues with `gpuflow bootstrap`"
            ) from None
        raise SubmissionError(
            f"the server refused a run of {deployment.name!r} ({status}): {detail}"
        ) from None


async def idle_pool_warning(client: PrefectClient, deployment: DeploymentResponse) -> str | None:
    """What to tell a user whose run waits on a work pool no worker polls (it would stay
    Scheduled, then Late, for ever); None when a worker is online or no pool is involved."""
    from prefect.client.schemas.objects import WorkerStatus

    pool = deployment.work_pool_name
    if not pool:
        return None
    workers = await client.read_workers_for_work_pool(pool)
    if any(worker.status == WorkerStatus.ONLINE for worker in workers):
        return None
    return (
        f"no worker polls work pool {pool!r}: the run waits until one does; start one with "
        f"`prefect worker start --pool {pool}`"
    )


async def read_stack_settings(client: PrefectClient, stack: str) -> dict[str, Any]:
    """The stack's saved fields, secrets left out, read as a document rather than by loading
    the block (which would import every backend): what submission checks need."""
    from prefect.exceptions import ObjectNotFound

    try:
        document = await client.read_block_document_by_name(
            stack, "gpuflow-stack", include_secrets=False
        )
    except ObjectNotFound:
        raise SubmissionError(
            f"no gpuflow-stack block {stack!r} on {client.api_url}: save one with "
            "`gpuflow bootstrap --stack-name NAME`"
        ) from None
    return dict(document.data)


async def check_capacity_for(settings: dict[str, Any], gpus: int, gpu_type: str | None) -> None:
    """Refuse a request for more GPUs than the stack's limits hold, naming the limit and its
    size, before a run is created."""
    from gpuflow.gpu.capacity import check_gpu_capacity, gpu_limit_names

    gpu_limit = str(settings.get("gpu_limit", "gpu"))
    await check_gpu_capacity(gpu_limit_names(gpu_limit, gpu_type), gpus)


def check_file_input(settings: dict[str, Any], stack: str, image_uri: str) -> None:
    """Refuse a ``file://`` input the run could not read, before the run exists: no
    ``file://`` store in the stack, a path outside the store's root, or (where the store's
    root is on this machine) no such file or one this user cannot read. Other schemes are
    the run's to read."""
    from gpuflow.storage.local import LocalObjectStore

    if ObjectUri.parse(image_uri).scheme != "file":
        return
    local_slug = LocalObjectStore.get_block_type_slug()
    roots = [
        Path(str(store["root"]))
        for store in (settings.get("object_store"), settings.get("model_store"))
        if isinstance(store, dict) and store.get("block_type_slug") == local_slug
    ]
    if not roots:
        raise SubmissionError(
            f"image_uri {image_uri!r}: stack {stack!r} has no file:// store; pass an object "
            "URI of its stores, or the picture's local path (it is uploaded first)"
        )
    root = roots[0]
    store = LocalObjectStore(root=root)
    try:
        store.stat(image_uri)
    except UriError:
        raise SubmissionError(
            f"image_uri {image_uri!r} is outside the stack's file:// store {root}: pass the "
            "picture's local path instead (it is uploaded into the store first)"
        ) from None
    except ObjectNotFoundError:
        if root.is_dir():  # else the store is another machine's: its run checks
            raise SubmissionError(
                f"image_uri {image_uri!r}: no such file in the stack's file:// store {root}"
            ) from None
        return
    if not os.access(ObjectUri.parse(image_uri).key, os.R_OK):
        raise SubmissionError(f"image_uri {image_uri!r}: the file is not readable (permission)")


# The workspace name a dry run shows where a run has its flow-run id.
DRY_RUN_ID = "dry-run"


class DryRunOutput(enum.StrEnum):
    """What ``gpuflow submit --dry-run`` prints: the whole plan, or the one request of the
    GPU step that a tool takes as it is (``kubectl apply -f -``, ``--cli-input-json``)."""

    JSON = "json"
    YAML = "yaml"
    PYTORCHJOB = "pytorchjob"  # the PyTorchJob manifest, YAML
    ECS_TASK_DEFINITION = "ecs-task-definition"  # RegisterTaskDefinition's input, JSON
    ECS_RUN_TASK = "ecs-run-task"  # RunTask's input, JSON


# The part of the GPU step's preview each single-request output prints, and its format.
_GPU_JOB_PARTS = {
    DryRunOutput.PYTORCHJOB: ("pytorchjob", "yaml"),
    DryRunOutput.ECS_TASK_DEFINITION: ("register_task_definition", "json"),
    DryRunOutput.ECS_RUN_TASK: ("run_task", "json"),
}


def render_dry_run(plan: dict[str, Any], output: DryRunOutput) -> str:
    """The dry run's plan as ``output`` asks; a part the stack's compute target does not send
    (a PyTorchJob of an ECS stack, a task definition the block names by ARN) is an error
    naming the target."""
    import json

    import yaml

    if output not in _GPU_JOB_PARTS:
        document: Any = plan
        fmt = output.value
    else:
        part, fmt = _GPU_JOB_PARTS[output]
        gpu_job = plan["gpu_job"]
        if part not in gpu_job:
            sent = ", ".join(key for key in gpu_job if key not in ("compute", "workspace_files"))
            raise SubmissionError(
                f"--output {output.value}: the stack's compute target {gpu_job['compute']} "
                f"sends no {part} (its dry run shows: {sent}); use --output json or yaml"
            )
        document = gpu_job[part]
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100).rstrip()
    return json.dumps(document, indent=2, ensure_ascii=False)


async def backend_preview(stack: str, request: VideoRequest) -> dict[str, Any]:
    """What the GPU step of a run for ``request`` would send to the stack's compute target
    (a PyTorchJob manifest, ECS task definition and RunTask requests, a local command),
    from the stack's settings alone: nothing is downloaded, built or created."""
    from gpuflow.pipeline.job_contract import PROMPT_FILE
    from gpuflow.pipeline.stack import GpuflowStack

    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    job = planned_job(pipeline, request)
    return {
        "compute": pipeline.compute.get_block_type_slug(),
        **pipeline.compute.preview(job),
        # What the run writes into its workspace before the job starts, by path.
        "workspace_files": {str(job.workdir / PROMPT_FILE): request.prompt},
    }


def planned_job(pipeline: GpuflowStack, request: VideoRequest) -> JobSpec:
    """The job a run would hand its compute target, with the paths the run would use: the
    model's place in the cache, the env the job's sources hash to (or its pin), and a
    workspace named ``DRY_RUN_ID``."""
    from gpuflow.core.workspace import Workspace
    from gpuflow.pipeline.job_contract import job_spec
    from gpuflow.storage.model_cache import CachedModel

    job_dir = pipeline.job_dir(request.job)
    if not (job_dir / "pyproject.toml").is_file():
        raise SubmissionError(
            f"job {request.job!r} has no project at {job_dir} (the stack's jobs_root): a dry "
            "run reads the job's sources to show its command"
        )
    workspace = Workspace(pipeline.nas_root / "workspaces" / DRY_RUN_ID)
    image = workspace.input_path(ObjectUri.parse(request.image_uri).name or "input-image")
    model = CachedModel(
        path=pipeline.model_cache.model_dir(request.model), downloaded=False, bytes_downloaded=0
    )
    env = _planned_env(pipeline, request.job, job_dir)
    job = job_spec(
        request, job_dir, env, model, image, workspace, pipeline.job_timeout_s, write_prompt=False
    )
    if job.torchrun is None and _locks_torch(job_dir):
        # The env may not exist here (the NAS of another cluster): its lock says whether it
        # will have torch's torchrun, which multi-process jobs are launched under.
        job = job.model_copy(update={"torchrun": str(env.script("torchrun"))})
    return job


def _locks_torch(job_dir: Path) -> bool:
    import tomllib

    try:
        lock = tomllib.loads((job_dir / "uv.lock").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return any(package.get("name") == "torch" for package in lock.get("package", []))


def _planned_env(pipeline: GpuflowStack, job: str, job_dir: Path) -> ResolvedEnv:
    """The env a run would resolve, hashed from the job's sources without building it."""
    from gpuflow.envs.catalog import ResolvedEnv
    from gpuflow.envs.key import environment_key

    catalog = pipeline.environments
    pin = catalog.pin_of(job)
    key = pin.key if pin is not None else environment_key(job_dir, catalog.python_version)
    return ResolvedEnv(key, catalog.env_dir(key), built=False, pinned=pin is not None)


async def upload_local_input(stack: str, path: Path) -> str:
    """Put a local file into the stack's object store, where every worker can read it, and
    return its URI: ``<outputs_uri>/uploads/<sha256>/<name>``, so a resubmission of the same
    file names the same object."""
    from gpuflow.pipeline.stack import GpuflowStack
    from gpuflow.storage.base import sha256_file

    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    digest = await asyncio.to_thread(sha256_file, path)
    uri = str(ObjectUri.parse(pipeline.outputs_uri).join("uploads", digest, path.name))
    await asyncio.to_thread(pipeline.object_store.upload, path, uri)
    return uri


async def output_uri(stack: str, run_id: str) -> str:
    """Where a completed run of ``generate-video`` put its video."""
    from gpuflow.pipeline.stack import GpuflowStack

    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    return output_uri_in(pipeline, run_id)


def output_uri_in(pipeline: GpuflowStack, run_id: str) -> str:
    from gpuflow.pipeline.job_contract import OUTPUT_NAME

    return str(ObjectUri.parse(pipeline.outputs_uri).join(run_id, OUTPUT_NAME))
