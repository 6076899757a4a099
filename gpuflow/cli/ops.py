"""``gpuflow bootstrap``, ``janitor`` and ``batch``: setting up and operating a server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from gpuflow.cli.runs import StateDir
from gpuflow.cli.support import CliExitCode, fail, human_bytes, load_data_file, prefect_api
from gpuflow.core.redaction import validation_problems
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.pipeline.submission import DEFAULT_DEPLOYMENT

Stack = Annotated[str, typer.Option(help="Name of the saved gpuflow-stack block.")]


def _gpu_types(pairs: list[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for pair in pairs:
        name, sep, slots = pair.partition("=")
        if not sep or not name or not slots.isdigit() or int(slots) < 1:
            raise fail(f"--gpu-type {pair!r} is not TYPE=SLOTS with SLOTS >= 1 (e.g. h100=8)")
        sizes[name] = int(slots)
    return sizes


def bootstrap(
    state_dir: StateDir,
    stack_name: Annotated[str, typer.Option(help="Name to save the stack block under.")] = (
        "default"
    ),
    stack_file: Annotated[
        Path | None,
        typer.Option(
            help="JSON/YAML with the stack's fields; the embedded default's stack when omitted."
        ),
    ] = None,
    gpu_slots: Annotated[
        int, typer.Option(min=1, help="GPUs all jobs together may use at once (the GPU limit).")
    ] = 1,
    gpu_type: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TYPE=SLOTS",
            help="A per-type GPU limit, e.g. h100=8 (repeat for each type).",
        ),
    ] = None,
    pool_type: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TYPE",
            help="Work pool type to create (repeatable; default: all of them).",
        ),
    ] = None,
    pool_prefix: Annotated[str, typer.Option(help="Pools are named PREFIX-TYPE.")] = "gpuflow",
) -> None:
    """Create or update pools, GPU limits, block types and the stack.

    Safe to repeat: what exists is updated.
    """
    from gpuflow.ops.bootstrap import bootstrap_server
    from gpuflow.ops.work_pools import POOL_TYPES, pool_name
    from gpuflow.pipeline.stack import GpuflowStack

    types = pool_type or list(POOL_TYPES)
    unknown = sorted(set(types) - set(POOL_TYPES))
    if unknown:
        raise fail(f"unknown work pool type(s) {unknown}; choose from {list(POOL_TYPES)}")
    if stack_file is not None:
        try:
            stack = GpuflowStack.model_validate(load_data_file(stack_file))
        except ValidationError as exc:
            raise fail(
                f"{stack_file} is not a valid gpuflow stack: {validation_problems(exc)}"
            ) from None
        except ValueError as exc:
            raise fail(
                f"{stack_file} is not a valid gpuflow stack ({type(exc).__name__})"
            ) from None
    else:
        stack = EmbeddedLayout(state_dir).stack()
    with prefect_api(state_dir) as api_url:
        report = asyncio.run(
            bootstrap_server(
                stack, stack_name, gpu_slots, _gpu_types(gpu_type or []), types, pool_prefix
            )
        )
    typer.echo(f"Bootstrapped {api_url}")
    for pool in report.pools_created:
        typer.echo(f"  created work pool {pool}")
    for pool in report.pools_updated:
        typer.echo(f"  updated work pool {pool}")
    variables = report.pool_variables
    for name, value in {**variables.set_from_stack, **variables.defaulted}.items():
        typer.echo(f"  variable {name} = {value}")
    for name in variables.kept:
        typer.echo(f"  variable {name} kept")
    for kind, names in variables.missing.items():
        typer.echo(
            f"  work pool {pool_name(kind, pool_prefix)} needs Prefect variable(s) "
            f"{', '.join(names)}: bootstrap with a {kind} stack, apply Terraform's prefect "
            "module, or `prefect variable set NAME VALUE`; until then its runs cannot start",
            err=True,
        )
    for name, slots in report.limits.items():
        typer.echo(f"  GPU limit {name}: {slots} slot(s)")
    typer.echo(f"  block types: {', '.join(report.block_types)}")
    typer.echo(f"  stack block: gpuflow-stack/{report.stack}")


def janitor(
    state_dir: StateDir,
    stack: Stack = "default",
    max_age_hours: Annotated[
        float, typer.Option(help="Remove unmarked workspaces of finished runs this old.")
    ] = 24.0,
    disk_warning_percent: Annotated[
        float, typer.Option(help="Warn (event + log) when the NAS is fuller than this.")
    ] = 70.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
) -> None:
    """Remove stale workspaces and report NAS disk use (one pass)."""
    from gpuflow.pipeline.janitor import JanitorPolicy, janitor

    try:
        policy = JanitorPolicy(
            max_age_hours=max_age_hours,
            disk_warning_percent=disk_warning_percent,
            dry_run=dry_run,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    with prefect_api(state_dir):
        report = asyncio.run(janitor(stack=stack, policy=policy))
    cleanup = report.workspaces
    verb = "Would remove" if dry_run else "Removed"
    typer.echo(
        f"{verb} {cleanup.removed} of {cleanup.scanned} workspace(s), "
        f"{human_bytes(cleanup.bytes_freed)} freed (kept: {cleanup.kept_active} active, "
        f"{cleanup.kept_young} young, {cleanup.kept_failed} failed within their keep time)"
    )
    typer.echo(
        f"NAS {report.disk.path}: {report.disk_used_percent:.1f}% used, "
        f"{human_bytes(report.disk.free_bytes)} free"
        + (f" — above {disk_warning_percent:.0f}%!" if report.disk_warning else "")
    )
    for slots in report.gpu_slots:
        typer.echo(f"GPU limit {slots.name}: {slots.active_slots}/{slots.limit} slot(s) in use")


def batch(
    manifest: Annotated[
        str, typer.Argument(help="JSONL or CSV manifest: a local path or an object URI.")
    ],
    state_dir: StateDir,
    stack: Stack = "default",
    deployment: Annotated[
        str, typer.Option(help="Deployment each request runs through.")
    ] = DEFAULT_DEPLOYMENT,
    max_in_flight: Annotated[int, typer.Option(help="Most runs in flight at once.")] = 4,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Run the valid lines of an invalid manifest.")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Batch name (reruns of one name skip what succeeded).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only validate the manifest; run nothing.")
    ] = False,
    poll_s: Annotated[float, typer.Option(help="Seconds between polls of runs.")] = 5.0,
) -> None:
    """Run every request of a manifest through a deployment.

    A bounded number run at a time. Exit code: 0 all succeeded, 4 some did not (rerun
    to retry only those), 1 invalid manifest (nothing ran).
    """
    from gpuflow.core.batch_manifest import manifest_format, parse_manifest
    from gpuflow.pipeline.batch import BatchFailedError, BatchSummary, batch_generate

    if check and "://" not in manifest:
        parsed = parse_manifest(
            Path(manifest).read_text(encoding="utf-8"), manifest_format(manifest)
        )
        for problem in parsed.problems:
            typer.echo(f"line {problem.line}: {problem.error}", err=True)
        typer.echo(
            f"{len(parsed.entries)} valid request(s), {len(parsed.problems)} invalid line(s)"
        )
        raise typer.Exit(int(CliExitCode.ERROR if parsed.problems else CliExitCode.OK))
    if check:
        raise fail("--check reads local manifests; pass a path (object URIs are read by a run)")
    with prefect_api(state_dir):
        try:
            summary: BatchSummary = asyncio.run(
                batch_generate(
                    manifest=manifest,
                    stack=stack,
                    deployment=deployment,
                    max_in_flight=max_in_flight,
                    skip_invalid=skip_invalid,
                    batch_name=name,
                    poll_interval_s=poll_s,
                )
            )
            code = CliExitCode.OK
        except BatchFailedError as exc:
            summary, code = exc.summary, CliExitCode.RUN_FAILED
    for row in summary.rows:
        typer.echo(
            f"line {row.line:>5}  {row.state:<12} {row.flow_run_id or '-':<36}  "
            f"{row.output_uri or row.note}"
        )
    typer.echo(
        f"Batch {summary.batch}: {summary.succeeded}/{summary.total} succeeded "
        f"({summary.skipped_succeeded_before} before this run), {summary.invalid} invalid line(s)"
    )
    raise typer.Exit(int(code))
