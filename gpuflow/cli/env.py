"""``gpuflow env``: build, list, show, pin and collect the job environments on the NAS.

Works from the NAS alone (no Prefect server): ``--nas-root`` or ``GPUFLOW_NAS_ROOT``
names it; the embedded default's NAS is the fallback.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gpuflow.core.errors import GpuflowError
from gpuflow.ops.embedded import EmbeddedLayout, default_state_dir

if TYPE_CHECKING:
    from gpuflow.envs.catalog import EnvCatalog

env_app = typer.Typer(
    help="Prebuilt, content-addressed job environments on the NAS.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _default_nas_root() -> Path:
    return EmbeddedLayout(default_state_dir()).nas_root


NasRoot = Annotated[
    Path,
    typer.Option(
        default_factory=_default_nas_root,
        envvar="GPUFLOW_NAS_ROOT",
        show_default="the embedded default's NAS",
        help="The NAS root holding envs/ and uv-cache/.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _fabric(nas_root: Path) -> EnvCatalog:
    # The plain catalog, not its Prefect block: importing Prefect would cost every `env`
    # command a second and more. Imported when a command runs, so `--help` skips it too.
    from gpuflow.envs.catalog import EnvCatalog

    return EnvCatalog(root=nas_root)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@env_app.command("build")
def build(
    job_dir: Annotated[Path, typer.Argument(help="The job's uv project directory.")],
    nas_root: NasRoot,
    job: Annotated[str | None, typer.Option(help="Job name (default: the dir's name).")] = None,
    as_json: AsJson = False,
) -> None:
    """Build a job project's environment now (nothing to do when ready)."""
    if not job_dir.is_dir():
        raise _fail(f"job directory {job_dir} does not exist")
    fabric = _fabric(nas_root)
    started = time.monotonic()
    try:
        env = fabric.ensure(job_dir, job)
    except GpuflowError as exc:
        raise _fail(str(exc)) from None
    seconds = time.monotonic() - started
    if env.link_mode == "copy":
        typer.secho(
            f"warning: env {env.key} was built by COPYING packages, not hardlinking them: "
            f"put the uv cache {fabric.uv_cache_dir} on the filesystem of {fabric.envs_dir}",
            fg=typer.colors.YELLOW,
            err=True,
        )
    data = {
        "key": env.key,
        "built": env.built,
        "python": str(env.python),
        "link_mode": env.link_mode,
        "seconds": round(seconds, 3),
    }
    verb = "Built" if env.built else "Ready"
    _emit(data, as_json, f"{verb} {env.key} in {seconds:.2f}s: {env.python}")


@env_app.command("list")
def list_envs(nas_root: NasRoot, as_json: AsJson = False) -> None:
    """List the environments: job, status, size, links, last use, pins."""
    fabric = _fabric(nas_root)
    pinned = {pin.key: pin.job for pin in fabric.pins()}
    current = {record.current: record.job for record in fabric.job_records()}
    rows = []
    for key in fabric.env_keys():
        metadata = fabric.metadata(key)
        rows.append(
            {
                "key": key,
                "status": "ready" if metadata else "unfinished",
                "job": metadata.job if metadata else "",
                "current_of": current.get(key, ""),
                "pinned_by": pinned.get(key, ""),
                "size_bytes": metadata.size_bytes if metadata else 0,
                "link_mode": metadata.link_mode if metadata else "",
                "created": metadata.created.isoformat() if metadata else "",
                "last_used": metadata.last_used.isoformat() if metadata else "",
            }
        )
    copied = sum(1 for row in rows if row["link_mode"] == "copy")
    lines = [
        f"{'KEY':<26}{'STATUS':<12}{'JOB':<16}{'SIZE MB':>9}  {'LINKS':<9}{'LAST USED':<21}NOTE"
    ]
    for row in rows:
        note = "; ".join(
            text
            for text in (
                f"current of {row['current_of']}" if row["current_of"] else "",
                f"pinned by {row['pinned_by']}" if row["pinned_by"] else "",
            )
            if text
        )
        lines.append(
            f"{row['key']:<26}{row['status']:<12}{row['job']:<16}"
            f"{int(row['size_bytes']) / 1e6:>9.1f}  {row['link_mode']:<9}"
            f"{str(row['last_used'])[:19].replace('T', ' '):<21}"
            f"{note}"
        )
    lines.append(f"{len(rows)} envs; {copied} built by copying instead of hardlinking")
    _emit({"envs": rows, "copied_envs": copied}, as_json, "\n".join(lines))


@env_app.command("show")
def show(
    key: Annotated[str, typer.Argument(help="The env's key.")],
    nas_root: NasRoot,
) -> None:
    """Show one environment's metadata: packages, size, build, use."""
    fabric = _fabric(nas_root)
    metadata = fabric.metadata(key)
    if metadata is None:
        state = "unfinished (a build in progress or its wreck)" if key in fabric.env_keys() else ""
        raise _fail(f"no ready environment {key!r}" + (f": it is {state}" if state else ""))
    typer.echo(metadata.model_dump_json(indent=2))


@env_app.command("resolve")
def resolve(
    job: Annotated[str, typer.Argument(help="The job's name.")],
    nas_root: NasRoot,
) -> None:
    """Print the interpreter of a job's env (its pin, else its latest)."""
    try:
        env = _fabric(nas_root).resolve_job(job)
    except GpuflowError as exc:
        raise _fail(str(exc)) from None
    typer.echo(str(env.python))


@env_app.command("pin")
def pin(
    job: Annotated[str, typer.Argument(help="The job's name.")],
    key: Annotated[str, typer.Argument(help="A ready env's key (e.g. an earlier one).")],
    nas_root: NasRoot,
    reason: Annotated[str, typer.Option(help="Why (shown by list and show).")] = "",
) -> None:
    """Make a job's runs use this env, whatever its sources hash to.

    A rollback: `gpuflow env unpin` undoes it.
    """
    try:
        _fabric(nas_root).pin(job, key, reason)
    except GpuflowError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"Pinned job {job} to {key}")


@env_app.command("unpin")
def unpin(job: Annotated[str, typer.Argument(help="The job's name.")], nas_root: NasRoot) -> None:
    """Let a job follow its sources again."""
    removed = _fabric(nas_root).unpin(job)
    typer.echo(f"Unpinned job {job}" if removed else f"Job {job} was not pinned")


@env_app.command("gc")
def gc(
    nas_root: NasRoot,
    max_idle_days: Annotated[float, typer.Option(min=0, help="Evict envs unused this long.")] = 14,
    max_age_days: Annotated[
        float | None, typer.Option(min=0, help="Also evict envs built longer ago than this.")
    ] = None,
    include_current: Annotated[
        bool,
        typer.Option(
            "--include-current", help="Evict a job's current env too (its next run then builds)."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Tell what would go; remove nothing.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Evict envs by last use and age (never pinned, held or building)."""
    from gpuflow.envs.gc import GcPolicy, collect_garbage

    policy = GcPolicy(
        max_idle=timedelta(days=max_idle_days),
        max_age=None if max_age_days is None else timedelta(days=max_age_days),
        keep_current=not include_current,
    )
    decisions = collect_garbage(_fabric(nas_root), policy, dry_run=dry_run)
    rows = [{"key": d.key, "action": d.action, "reason": d.reason} for d in decisions]
    text = "\n".join(f"{d.key:<26}{d.action:<13}{d.reason}" for d in decisions) or "no envs"
    _emit(rows, as_json, text)
