"""A request that gets past the server (a deployment that does not enforce its schema) fails
on the worker with its reason in the run's state message and logs, where the UI shows them."""

from __future__ import annotations

import asyncio
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.flow_engine import run_flow_async
from prefect.logging.handlers import APILogWorker

from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.generate_video import generate_video

pytestmark = pytest.mark.integration


def test_a_refused_request_says_why_in_the_state_and_the_logs(
    prefect_server: LocalServer,
) -> None:
    parameters = {
        "request": {"prompt": "x", "image_uri": "s3://bucket/cat.png", "num_frames": 18},
        "stack": "default",
    }

    async def run_and_read() -> tuple[str, str, list[str]]:
        async with get_client() as client:
            run = await client.create_flow_run(generate_video, parameters=parameters)
            # What a worker does with the run it picked up.
            await run_flow_async(
                generate_video, flow_run=run, parameters=parameters, return_type="state"
            )
            # From a thread: called on the loop, drain_all returns a coroutine to await.
            await asyncio.to_thread(APILogWorker.drain_all, timeout=10)
            final = await client.read_flow_run(run.id)
            assert final.state is not None
            # The server stores delivered logs a moment later: wait for the error's line.
            deadline = time.monotonic() + 30
            while True:
                logs = await client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
                )
                messages = [log.message for log in logs]
                if any("Encountered exception" in m for m in messages):
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            return final.state.name or "", final.state.message or "", messages

    state, message, logs = asyncio.run(run_and_read())
    assert state == "Failed"
    assert "num_frames" in message and "4n+1" in message, message
    assert any("num_frames" in line and "4n+1" in line for line in logs), logs
