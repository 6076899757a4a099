"""What every ``gpuflow`` command shares: exit codes, errors, reaching the Prefect API."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from gpuflow.core.redaction import yaml_problem
from gpuflow.ops.local_server import read_server


class CliExitCode(enum.IntEnum):
    """Exit codes scripts can rely on (docs/daily-use.md lists them)."""

    OK = 0
    ERROR = 1  # bad input, configuration or an API error: nothing was run
    USAGE = 2  # bad command line (Click's own code)
    NOT_FOUND = 3  # no such run, server or deployment
    RUN_FAILED = 4  # the run (or some runs of a batch) failed or crashed
    RUN_CANCELLED = 5
    RUN_NOT_FINISHED = 6  # `status`: the run is still scheduled, pending or running
    INTERRUPTED = 130  # Ctrl-C


def human_bytes(size: int) -> str:
    """A byte count as people read it: ``512 B``, ``1.5 KiB``, ``72.3 GiB``."""
    if abs(size) < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} PiB"


def fail(message: str, code: CliExitCode = CliExitCode.ERROR) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(int(code))


def unreachable_api(api_url: str, reason: object) -> typer.Exit:
    """The one answer of every command whose Prefect API does not answer."""
    return fail(
        f"cannot reach the Prefect API at {api_url} ({reason}): start it with "
        "`gpuflow server start`, or set PREFECT_API_URL to a running server",
        CliExitCode.NOT_FOUND,
    )


def _require_reachable(api_url: str) -> None:
    """Fail at once, naming the URL, when nothing answers there. Any HTTP answer counts
    (Prefect Cloud answers 401 without a key): only a transport failure is refused."""
    import httpx

    try:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=10)
    except httpx.TransportError as exc:
        raise unreachable_api(api_url, str(exc) or type(exc).__name__) from None
    except httpx.InvalidURL as exc:
        raise fail(f"PREFECT_API_URL {api_url!r} is not a URL: {exc}") from None


@contextmanager
def prefect_api(state_dir: Path) -> Iterator[str]:
    """The Prefect API the command talks to: PREFECT_API_URL (or the profile's), else the
    embedded default's local server. Never the ephemeral in-process server, whose runs no
    worker would see."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        _require_reachable(str(configured))
        yield str(configured)
        return
    server = read_server(state_dir)
    if server is None:
        raise fail(
            f"no Prefect API: no local server runs for {state_dir}; set PREFECT_API_URL, "
            "start the local server with `gpuflow server start`, or name the state directory "
            "of a running one with --state-dir or GPUFLOW_STATE_DIR",
            CliExitCode.NOT_FOUND,
        )
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server.api_url


def load_data_file(path: Path) -> dict[str, Any]:
    """A JSON or YAML mapping from a file, or an error naming the file."""
    import yaml  # here, not at the top: every command's start-up would pay for it

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = (
            yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        )
    except yaml.YAMLError as exc:
        # Never quote the document: a stack file holds credentials.
        raise fail(f"{path} is not valid YAML: {yaml_problem(exc)}") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:
        raise fail(f"{path} is not valid JSON/YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise fail(f"{path} must hold a mapping of fields, not {type(data).__name__}")
    return data
