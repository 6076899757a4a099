"""Session fixture: gpuflow bootstrapped and deployed on the test server, with a process worker.

Registered in tests/conftest.py (``pytest_plugins``) so every module shares one deploy and
one worker. The worker serves the `high` and `normal` queues only: runs put on `batch` wait
(the Ctrl-C test needs a run that stays scheduled) and the janitor's 5-minute schedule
(`maintenance`) never runs here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuflow.ops.local_server import LocalServer, stop_process

REPO = Path(__file__).resolve().parents[2]
GPUFLOW = str(Path(sys.executable).with_name("gpuflow"))
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYED_IMAGE = "gpuflow:0.1.0"


@dataclass(frozen=True)
class Deployed:
    stack: str
    deploy_output: str
    worker_log: Path


def cli_env(state_dir: Path, server: LocalServer) -> dict[str, str]:
    return {
        **os.environ,
        "GPUFLOW_STATE_DIR": str(state_dir),
        "PREFECT_API_URL": server.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@pytest.fixture(scope="session")
def deployed(
    prefect_server: LocalServer, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    env = cli_env(state_dir, prefect_server)
    stack = f"deployed-{uuid.uuid4().hex[:8]}"
    boot = subprocess.run(
        [GPUFLOW, "bootstrap", "--stack-name", stack, "--gpu-slots", "2"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert boot.returncode == 0, boot.stderr[-3000:]
    # The container deployments run an image named here, not built: this deploy needs no
    # Docker engine (tests/containers/test_deploy_build.py builds through prefect deploy).
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"],
        cwd=REPO, env={**env, "GPUFLOW_IMAGE": DEPLOYED_IMAGE},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert deploy.returncode == 0, (deploy.stdout + deploy.stderr)[-4000:]
    worker_log = tmp_path_factory.mktemp("worker") / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "gpuflow-process",
             "--work-queue", "high", "--work-queue", "normal", "--type", "process"],
            cwd=REPO,
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield Deployed(stack, deploy.stdout + deploy.stderr, worker_log)
    finally:
        stop_process(worker.pid)
