"""``gpuflow submit``, ``status`` and ``logs``: runs of a deployment, from a terminal."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from gpuflow.cli.support import CliExitCode, fail, load_data_file, prefect_api
from gpuflow.core.request import MAX_GPUS_PER_REQUEST, Priority, parse_request
from gpuflow.ops.embedded import default_state_dir
from gpuflow.pipeline.submission import DEFAULT_DEPLOYMENT, DryRunOutput

# Prefect's client is imported in the commands' bodies, so that `--help` answers at once.
if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

    from gpuflow.core.request import VideoRequest
    from gpuflow.ops.run_watch import RunSnapshot

_BAR_WIDTH = 30
_LOG_PAGE = 200

StateDir = Annotated[
    Path,
    typer.Option(
        default_factory=default_state_dir,
        envvar="GPUFLOW_STATE_DIR",
        show_default="the nearest .gpuflow/ here or above, else ./.gpuflow",
        help="The embedded default's state (its local server answers when PREFECT_API_URL "
        "is unset).",
    ),
]
Stack = Annotated[str, typer.Option(help="Name of the saved gpuflow-stack block.")]


def _exit_code(snap: RunSnapshot) -> CliExitCode:
    from prefect.client.schemas.objects import StateType

    if not snap.finished:
        return CliExitCode.RUN_NOT_FINISHED
    if snap.state_type == StateType.COMPLETED:
        return CliExitCode.OK
    if snap.state_type == StateType.CANCELLED:
        return CliExitCode.RUN_CANCELLED
    return CliExitCode.RUN_FAILED


def _describe(snap: RunSnapshot) -> str:
    parts = [snap.state_name]
    if snap.step and not snap.finished:
        parts.append(f"step {snap.step}")
    if snap.progress:
        parts.append(snap.progress)
    return " · ".join(parts)


def _bar(percent: float | None) -> str:
    filled = round(_BAR_WIDTH * (percent or 0.0) / 100)
    return f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {percent or 0.0:5.1f}%"


async def _finish_line(snap: RunSnapshot) -> None:
    from prefect.client.schemas.objects import StateType

    from gpuflow.pipeline.submission import output_uri

    stack = str(snap.run.parameters.get("stack", "default"))
    if snap.state_type == StateType.COMPLETED:
        typer.echo(f"Output: {await output_uri(stack, str(snap.run.id))}")
    elif snap.run.state is not None and snap.run.state.message:
        typer.echo(f"{snap.state_name}: {snap.run.state.message}", err=True)


async def _follow(run_id: UUID, poll_s: float) -> RunSnapshot:
    """Show the run's progress until it finishes: a redrawn bar on a terminal, one line per
    change otherwise (logs, CI)."""
    from prefect.client.orchestration import get_client

    from gpuflow.ops.run_watch import snapshot

    interactive = sys.stdout.isatty()
    shown = ""
    async with get_client() as client:
        while True:
            snap = await snapshot(client, run_id)
            line = f"{_bar(snap.percent)} {_describe(snap)}"
            if line != shown:
                if interactive:
                    typer.echo(f"\r\x1b[2K{line}", nl=False)
                else:
                    typer.echo(line)
                shown = line
            if snap.finished:
                if interactive:
                    typer.echo()
                return snap
            await asyncio.sleep(poll_s)


async def _cancel(run_id: UUID) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async with get_client() as client:
        await client.set_flow_run_state(run_id, Cancelling(message="cancelled from gpuflow submit"))


def _request_fields(file: Path | None, options: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = load_data_file(file) if file else {}
    fields.update({name: value for name, value in options.items() if value is not None})
    for assignment in sets:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise fail(f"--set {assignment!r} is not FIELD=VALUE")
        parent, _, child = name.partition(".")
        if child:
            fields.setdefault(parent, {})[child] = value
        else:
            fields[name] = value
    return fields


def _local_image(image_uri: object) -> Path | None:
    """The local file an ``image_uri`` without a scheme names (uploaded before the run is
    created, since a worker cannot read this machine's paths), or None for an object URI."""
    if not isinstance(image_uri, str) or "://" in image_uri:
        return None
    path = Path(image_uri).expanduser()
    if not path.is_file():
        raise fail(
            f"image_uri {image_uri!r} is neither an object URI (s3://…, file:///…) nor a local file"
        )
    return path.resolve()


def _gpus_beyond_bound(fields: dict[str, Any]) -> int | None:
    """The GPU count asked for when it exceeds the request's sanity bound, else None."""
    try:
        gpus = int(fields.get("gpus", 1))
    except (TypeError, ValueError):
        return None  # not a number: parse_request names it
    return gpus if gpus > MAX_GPUS_PER_REQUEST else None


def submit(
    state_dir: StateDir,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="JSON or YAML file with the request's fields."),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="What should happen in the video.")] = None,
    image_uri: Annotated[
        str | None,
        typer.Option(
            help="The input image: an object URI (s3://…, file:///…) or a local file, which "
            "is uploaded into the stack's object store first."
        ),
    ] = None,
    resolution: Annotated[
        str | None,
        typer.Option(
            help="Video size in pixels, WIDTHxHEIGHT, multiples of 16 from 64 to 1920 "
            "(e.g. 832x480; default 320x192)."
        ),
    ] = None,
    num_frames: Annotated[
        int | None,
        typer.Option(help="Frames to generate, 4n+1 up to 241 (e.g. 81: 5 s at 16 fps)."),
    ] = None,
    fps: Annotated[
        int | None, typer.Option(help="Frames per second, 1 to 60 (default 16).")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Random seed, 0 to 4294967295; the same seed, the same video."),
    ] = None,
    priority: Annotated[
        Priority | None,
        typer.Option(help="Work queue the run waits in: high is served first, batch last."),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(help="GPUs the job needs, all replicas together; at most the GPU limit."),
    ] = None,
    gpu_type: Annotated[
        str | None,
        typer.Option(help="GPU type the job must run on (e.g. h100); empty means any."),
    ] = None,
    set_fields: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="FIELD=VALUE",
            help="Any request field, e.g. --set model.name=wan2.2-i2v-a14b (repeatable).",
        ),
    ] = None,
    deployment: Annotated[
        str, typer.Option(help="Deployment to run (flow-name/deployment-name).")
    ] = DEFAULT_DEPLOYMENT,
    stack: Stack = "default",
    follow: Annotated[
        bool, typer.Option("--follow", help="Show progress until the run ends (Ctrl-C to stop).")
    ] = False,
    poll_s: Annotated[float, typer.Option(help="Seconds between progress updates.")] = 1.0,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the request against the deployment and the GPU limits and print "
            "(see --output) the run it would create and what its GPU step would send to the "
            "stack's compute target (PyTorchJob manifest, ECS task definition and RunTask, or "
            "the local command); create, upload and change nothing.",
        ),
    ] = False,
    output: Annotated[
        DryRunOutput,
        typer.Option(
            metavar="FORMAT",
            help="With --dry-run: json or yaml (the whole plan), or only the GPU step's "
            "request, for a tool to take as it is: pytorchjob (YAML, for kubectl), "
            "ecs-task-definition or ecs-run-task (JSON, for the aws CLI's --cli-input-json).",
        ),
    ] = DryRunOutput.JSON,
) -> None:
    """Create a run of a deployment for one request.

    As the Prefect UI's custom run does. Options override the file's fields. Prints the
    run id; with --follow, shows a live progress bar and the current step, and the output
    URI at the end.
    """
    options = {
        "prompt": prompt,
        "image_uri": image_uri,
        "resolution": resolution,
        "num_frames": num_frames,
        "fps": fps,
        "seed": seed,
        "priority": priority.value if priority else None,
        "gpus": gpus,
        "gpu_type": gpu_type,
    }
    from prefect.client.orchestration import get_client

    from gpuflow.pipeline.submission import (
        backend_preview,
        check_capacity_for,
        check_file_input,
        find_deployment,
        idle_pool_warning,
        planned_run,
        read_stack_settings,
        render_dry_run,
        submit_request,
        upload_local_input,
    )

    if output != DryRunOutput.JSON and not dry_run:
        raise fail(f"--output {output.value} applies to --dry-run only")
    fields = _request_fields(file, options, set_fields or [])
    local_image = _local_image(fields.get("image_uri"))
    if local_image is not None:
        fields["image_uri"] = "file:///uploaded-before-the-run"  # validated now, replaced below
    # Every other field is checked now, with no server; a GPU count beyond the sanity bound
    # goes first against the stack's GPU limits, the real cap, so the refusal names that.
    gpus_beyond_bound = _gpus_beyond_bound(fields)
    if gpus_beyond_bound is None:
        request = parse_request(fields)
    else:
        request = parse_request({**fields, "gpus": MAX_GPUS_PER_REQUEST})
    with prefect_api(state_dir) as api_url:

        async def create(request: VideoRequest) -> UUID | None:
            async with get_client() as client:
                target = await find_deployment(client, deployment)
                settings = await read_stack_settings(client, stack)
                await check_capacity_for(
                    settings, gpus_beyond_bound or request.gpus, request.gpu_type
                )
                if local_image is None:
                    check_file_input(settings, stack, request.image_uri)
                if gpus_beyond_bound is not None:
                    request = parse_request(fields)  # the limits hold them: the bound refuses
                if dry_run:
                    plan = planned_run(target, request, stack)
                    staged = request
                    if local_image is not None:
                        plan["parameters"]["request"]["image_uri"] = (
                            f"(an upload of {local_image} into the stack's object store)"
                        )
                        # The run stages the upload under the file's own name.
                        staged = request.model_copy(
                            update={"image_uri": f"file:///{local_image.name}"}
                        )
                    plan["gpu_job"] = await backend_preview(stack, staged)
                    typer.echo(render_dry_run(plan, output))
                    return None
                if local_image is not None:
                    uploaded = await upload_local_input(stack, local_image)
                    request = request.model_copy(update={"image_uri": uploaded})
                    typer.echo(f"Uploaded {local_image} to {uploaded}")
                run = await submit_request(client, target, request, stack)
                warning = await idle_pool_warning(client, target)
                if warning is not None:
                    typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
                return run.id

        run_id = asyncio.run(create(request))
        if run_id is None:
            typer.echo("Dry run: no run was created.", err=True)
            return
        typer.echo(f"Submitted run {run_id} of {deployment} ({request.priority.value} queue)")
        typer.echo(f"  {api_url.removesuffix('/api')}/runs/flow-run/{run_id}")
        if not follow:
            return
        try:
            snap = asyncio.run(_follow(run_id, poll_s))
        except KeyboardInterrupt:
            typer.echo()
            if typer.confirm(f"Cancel run {run_id}?", default=False, err=True):
                asyncio.run(_cancel(run_id))
                typer.echo(f"Cancelling run {run_id}.", err=True)
            else:
                typer.echo(f"Run {run_id} goes on: `gpuflow status {run_id}`.", err=True)
            raise typer.Exit(int(CliExitCode.INTERRUPTED)) from None
        asyncio.run(_finish_line(snap))
        raise typer.Exit(int(_exit_code(snap)))


def status(
    run: Annotated[str, typer.Argument(help="Flow run id.")],
    state_dir: StateDir,
) -> None:
    """Show a run's state, step, progress and (once done) output URI.

    Exit code: 0 completed, 4 failed or crashed, 5 cancelled, 6 not finished, 3 no such run.
    """
    from prefect.client.orchestration import get_client

    from gpuflow.ops.run_watch import parse_run_id, snapshot

    run_id = parse_run_id(run)
    with prefect_api(state_dir):

        async def read() -> RunSnapshot:
            async with get_client() as client:
                return await snapshot(client, run_id)

        snap = asyncio.run(read())
        typer.echo(f"{snap.run.name} ({run_id}): {_describe(snap)}")
        if snap.percent is not None:
            typer.echo(_bar(snap.percent))
        asyncio.run(_finish_line(snap))
    raise typer.Exit(int(_exit_code(snap)))


def logs(
    run: Annotated[str, typer.Argument(help="Flow run id.")],
    state_dir: StateDir,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.", min=1)] = None,
) -> None:
    """Print a run's logs (flow and tasks), oldest first.

    Each line names the task run it came from, or the flow run for the flow's own lines.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    from gpuflow.ops.run_watch import parse_run_id, read_run

    run_id = parse_run_id(run)
    with prefect_api(state_dir):

        async def read() -> list[str]:
            async with get_client() as client:
                flow_run = await read_run(client, run_id)
                records = []
                offset = 0
                while True:
                    page = await client.read_logs(
                        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                        limit=_LOG_PAGE,
                        offset=offset,
                        sort=LogSort.TIMESTAMP_ASC,
                    )
                    records.extend(page)
                    if len(page) < _LOG_PAGE:
                        break
                    offset += _LOG_PAGE
                task_ids = {record.task_run_id for record in records if record.task_run_id}
                task_names = await _task_run_names(client, task_ids)
            lines = []
            for record in records:
                stamp = record.timestamp.strftime("%H:%M:%S")
                level = _LEVELS.get(record.level, str(record.level))
                # A task's line names its task run; a line the flow itself logged, the flow run.
                source = (
                    task_names.get(record.task_run_id, str(record.task_run_id))
                    if record.task_run_id
                    else flow_run.name
                )
                lines.append(f"{stamp} {level:<8} {source} | {record.message}")
            return lines

        lines = asyncio.run(read())
    for line in lines[-tail:] if tail else lines:
        typer.echo(line)


async def _task_run_names(client: PrefectClient, task_run_ids: set[UUID]) -> dict[UUID, str]:
    """The names of these task runs, read in pages (one request for a typical run)."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    ids = sorted(task_run_ids)
    names: dict[UUID, str] = {}
    for start in range(0, len(ids), _LOG_PAGE):
        chunk = ids[start : start + _LOG_PAGE]
        task_runs = await client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)), limit=len(chunk)
        )
        names.update({task_run.id: task_run.name for task_run in task_runs})
    return names


_LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
