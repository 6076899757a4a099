"""The ``gpuflow`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpuflow.cli.env import env_app
from gpuflow.core.errors import GpuflowError
from gpuflow.ops.embedded import EmbeddedLayout, default_state_dir
from gpuflow.ops.local_server import (
    LocalServer,
    ServerError,
    ensure_server,
    read_server,
    stop_server,
)

# Plain help (no rich markup): rendering it with rich costs more start-up than the rest of
# `gpuflow --help` together.
app = typer.Typer(
    help="Run GPU batch jobs (image-to-video) as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
server_app = typer.Typer(
    help="The local Prefect server of the embedded default.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(server_app, name="server")
app.add_typer(env_app, name="env")


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="GPUFLOW_DEBUG", help="Show tracebacks of errors.")
    ] = False,
) -> None:
    """Run GPU batch jobs (image-to-video) as Prefect flows."""


def main() -> None:
    """The console script: errors as one line and an exit code, tracebacks only with --debug."""
    from gpuflow.cli.quiet import quiet_prefect_client
    from gpuflow.cli.support import CliExitCode, unreachable_api
    from gpuflow.core.errors import NotFoundError

    quiet_prefect_client()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(int(CliExitCode.INTERRUPTED))
    except Exception as exc:
        if "--debug" in sys.argv[1:] or os.environ.get("GPUFLOW_DEBUG"):
            raise
        import httpx

        if isinstance(exc, httpx.TransportError):  # the server went away during the command
            sys.exit(unreachable_api(str(exc.request.url), exc).exit_code)
        message = str(exc) if isinstance(exc, GpuflowError) else f"{type(exc).__name__}: {exc}"
        typer.secho(f"error: {message} (--debug shows the traceback)", fg="red", err=True)
        sys.exit(
            int(CliExitCode.NOT_FOUND if isinstance(exc, NotFoundError) else CliExitCode.ERROR)
        )


StateDir = Annotated[
    Path,
    typer.Option(
        default_factory=default_state_dir,
        envvar="GPUFLOW_STATE_DIR",
        show_default="the nearest .gpuflow/ here or above, else ./.gpuflow",
        help="Where the embedded default keeps its server, NAS and object store.",
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _start_server(state_dir: Path) -> LocalServer:
    try:
        server, started = ensure_server(state_dir)
    except ServerError as exc:
        raise _fail(str(exc)) from None
    verb = "Started" if started else "Reusing"
    typer.echo(f"{verb} the local Prefect server at {server.ui_url} (state in {state_dir})")
    return server


@server_app.command("start")
def server_start(state_dir: StateDir) -> None:
    """Start the local Prefect server, or report the one running."""
    server = _start_server(state_dir)
    typer.echo(f"export PREFECT_API_URL={server.api_url}")


@server_app.command("stop")
def server_stop(state_dir: StateDir) -> None:
    """Stop the local Prefect server."""
    typer.echo(
        "Stopped the local Prefect server."
        if stop_server(state_dir)
        else "No local server was running."
    )


@server_app.command("status")
def server_status(state_dir: StateDir) -> None:
    """Tell whether the local Prefect server is running."""
    server = read_server(state_dir)
    if server is None:
        raise _fail(f"no local Prefect server is running for {state_dir}", code=3)
    typer.echo(f"running: pid {server.pid}, UI {server.ui_url}, API {server.api_url}")


@app.command()
def demo(
    state_dir: StateDir,
    prompt: Annotated[str, typer.Option(help="What should happen in the video.")] = (
        "a slow push in over green hills at sunset"
    ),
    resolution: Annotated[
        str, typer.Option(help="Video size in pixels, WIDTHxHEIGHT, multiples of 16.")
    ] = "320x192",
    num_frames: Annotated[int, typer.Option(help="Frames to generate, 4n+1 (e.g. 81).")] = 33,
    fps: Annotated[int, typer.Option(help="Frames per second, 1 to 60.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed, the same video.")] = 42,
    gpu_slots: Annotated[
        int, typer.Option(help="GPUs of this machine that jobs may use at once.")
    ] = 1,
) -> None:
    """Run one request end to end on the embedded default.

    Starts the local server if needed, and uses the embedded NAS and object store.
    """
    server = _start_server(state_dir)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gpuflow.core.request import parse_request
    from gpuflow.ops.bootstrap import bootstrap
    from gpuflow.pipeline.generate_video import generate_video

    layout = EmbeddedLayout(state_dir)
    image_uri = layout.seed_samples()
    try:
        request = parse_request(
            {
                "prompt": prompt,
                "image_uri": image_uri,
                "resolution": resolution,
                "num_frames": num_frames,
                "fps": fps,
                "seed": seed,
            }
        )
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            asyncio.run(bootstrap(layout.stack(), "default", gpu_slots))
            uri = asyncio.run(generate_video(request=request, stack="default"))
    except GpuflowError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"Output video: {uri}")
    if uri.startswith("file://"):
        from gpuflow.storage.uri import ObjectUri

        typer.echo(f"  local path: {ObjectUri.parse(uri).key}")
    typer.echo(f"Runs, logs and artifacts: {server.ui_url}/runs")


@app.command()
def run(
    request_file: Annotated[Path, typer.Argument(help="JSON file with the request.", exists=True)],
    stack: Annotated[str, typer.Option(help="Name of the saved gpuflow-stack block.")] = "default",
) -> None:
    """Run one request in this process, without a worker.

    Uses the Prefect API in PREFECT_API_URL.
    """
    from gpuflow.core.request import parse_request
    from gpuflow.pipeline.generate_video import generate_video

    try:
        request = parse_request(json.loads(request_file.read_text()))
        uri = asyncio.run(generate_video(request=request, stack=stack))
    except (GpuflowError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(uri)


@app.command()
def reconcile(
    stack: Annotated[str, typer.Option(help="Name of the saved gpuflow-stack block.")] = "default",
    limit: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME", help="GPU limit to check (repeatable; default: the stack's)."),
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Release the slots of dead holders.")
    ] = False,
) -> None:
    """Compare GPU limits' used slots with the jobs really running.

    Exit code 2 on a mismatch left unrepaired. Uses the Prefect API in PREFECT_API_URL.
    """
    from typing import cast

    from gpuflow.gpu.reconcile import reconcile_gpu_slots
    from gpuflow.pipeline.stack import GpuflowStack

    async def check() -> tuple[str, bool]:
        pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
        report = await reconcile_gpu_slots(
            limit or [pipeline.gpu_limit], repair, pipeline.job_registry
        )
        return report.summary(), report.consistent

    try:
        summary, consistent = asyncio.run(check())
    except ValueError as exc:  # no such stack block
        raise _fail(str(exc)) from None
    typer.echo(summary)
    if not consistent:
        raise typer.Exit(2)


def _register_daily_use_commands() -> None:
    """submit, status, logs, batch, janitor, bootstrap (docs/daily-use.md)."""
    from gpuflow.cli import ops as cli_ops
    from gpuflow.cli import runs as cli_runs

    app.command()(cli_runs.submit)
    app.command()(cli_runs.status)
    app.command()(cli_runs.logs)
    app.command()(cli_ops.batch)
    app.command()(cli_ops.janitor)
    app.command()(cli_ops.bootstrap)


_register_daily_use_commands()
