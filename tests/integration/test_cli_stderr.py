"""`gpuflow submit / status / logs` on a terminal: stderr holds gpuflow's own lines only.

Prefect's client would add its telemetry notice (first import on a terminal) and the events
worker's "Still processing items" warning (a block was loaded just before exit)."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from gpuflow.ops.local_server import LocalServer
from tests.support.deployed import GPUFLOW, cli_env

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(292)]


@flow(name="generate-video")
def finished_run(stack: str) -> UUID:
    """A completed run with a stack parameter: `status` then loads that stack's block."""
    return UUID(flow_run.id)


def _stderr_on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal, as a user's shell has it."""
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [GPUFLOW, *args], env=env, stdout=subprocess.PIPE, stderr=terminal, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return done.returncode, done.stdout, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


async def _deploy_without_pool(name: str) -> None:
    async with get_client() as client:
        flow_id = await client.create_flow_from_name("generate-video")
        await client.create_deployment(flow_id=flow_id, name=name, parameter_openapi_schema={})


def test_submit_status_and_logs_write_no_prefect_noise_to_stderr(
    prefect_server: LocalServer, state_dir: Path, tmp_path: Path
) -> None:
    stack = f"quiet-{uuid.uuid4().hex[:8]}"
    # A fresh Prefect home is a first-time user's: the one the telemetry notice greets.
    env = {**cli_env(state_dir, prefect_server), "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("DO_NOT_TRACK", None)
    boot = subprocess.run(
        [GPUFLOW, "bootstrap", "--stack-name", stack, "--gpu-slots", "1"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert boot.returncode == 0, boot.stderr[-3000:]
    run_id = str(finished_run(stack))
    asyncio.run(_deploy_without_pool(stack))
    image = state_dir / "store" / f"{stack}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x89PNG\r\n\x1a\n")

    commands = {
        "status": ["status", run_id],
        "logs": ["logs", run_id],
        "submit": [
            "submit", "--prompt", "a cat", "--image-uri", image.as_uri(),
            "--deployment", f"generate-video/{stack}", "--stack", stack,
        ],
    }  # fmt: skip
    for name, args in commands.items():
        code, stdout, stderr = _stderr_on_a_terminal(env, *args)
        assert code == 0, (name, stdout, stderr)
        assert stderr == "", (name, stderr)
    assert "Output: " in _stderr_on_a_terminal(env, "status", run_id)[1]
