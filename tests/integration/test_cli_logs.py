"""`gpuflow logs` against the real server: each line names the run it came from."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.logging.handlers import APILogWorker
from prefect.runtime import flow_run

from gpuflow.ops.local_server import LocalServer
from tests.support.deployed import GPUFLOW, cli_env

pytestmark = pytest.mark.integration


@task
def stage_inputs() -> None:
    get_run_logger().info("staged the inputs")


@flow
def logs_sample() -> UUID:
    get_run_logger().info("flow starts")
    stage_inputs()
    return UUID(flow_run.id)


async def _names(run_id: UUID) -> tuple[str, list[str]]:
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        return run.name, [task_run.name for task_run in task_runs]


def test_logs_name_the_task_run_and_the_flow_run_of_each_line(
    prefect_server: LocalServer, state_dir: Path
) -> None:
    run_id = logs_sample()
    APILogWorker.drain_all(timeout=10)
    flow_run_name, task_run_names = asyncio.run(_names(run_id))
    assert len(task_run_names) == 1 and task_run_names[0].startswith("stage_inputs-")

    shown = subprocess.run(
        [GPUFLOW, "logs", str(run_id)],
        env=cli_env(state_dir, prefect_server), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = shown.stdout.splitlines()
    task_line = next(line for line in lines if line.endswith("staged the inputs"))
    assert f" INFO     {task_run_names[0]} | staged the inputs" in task_line
    flow_line = next(line for line in lines if line.endswith("flow starts"))
    assert f" INFO     {flow_run_name} | flow starts" in flow_line
    finished = [line for line in lines if "Finished in state Completed" in line]
    assert any(f"{task_run_names[0]} | " in line for line in finished), lines
