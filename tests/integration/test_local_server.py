"""The local server as a user meets it: its UI reaches its own API, its scheduler fires."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.schedules import IntervalSchedule

from gpuflow.ops.local_server import LocalServer

pytestmark = pytest.mark.integration


def test_the_ui_calls_the_api_of_the_server_that_serves_it(prefect_server: LocalServer) -> None:
    settings = httpx.get(f"{prefect_server.ui_url}/ui-settings", timeout=10).json()
    assert settings["api_url"] == prefect_server.api_url


def test_an_interval_schedule_produces_scheduled_runs(prefect_server: LocalServer) -> None:
    async def scheduled_runs_of_a_new_deployment() -> int:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(f"scheduled-{uuid.uuid4().hex[:8]}")
            deployment_id = await client.create_deployment(
                flow_id,
                name="every-five-minutes",
                schedules=[
                    DeploymentScheduleCreate(
                        schedule=IntervalSchedule(interval=timedelta(minutes=5)), active=True
                    )
                ],
            )
            # Creating a deployment schedules nothing itself: the server's scheduler service
            # picks up recently changed deployments every few seconds and creates their runs.
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                )
                if runs:
                    assert all(run.state_name == "Scheduled" for run in runs)
                    return len(runs)
                await asyncio.sleep(1)
            return 0

    # A broken scheduler loop creates no runs; its tracebacks in the server's log fail the
    # session (the `prefect_server` fixture checks the log when it stops the server).
    assert asyncio.run(scheduled_runs_of_a_new_deployment()) > 0
