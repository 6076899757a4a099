"""`prefect deploy --all` against a real server, then runs as the Prefect UI creates them."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.exceptions import PrefectHTTPStatusError

from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.ops.work_pools import PRIORITY_QUEUES, base_job_template
from gpuflow.storage.uri import ObjectUri
from tests.support.deployed import GPUFLOW, Deployed, cli_env
from tests.support.media import probe

pytestmark = pytest.mark.integration


def request_fields(layout: EmbeddedLayout, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": "pan left over the hills",
        "image_uri": layout.seed_samples(),
        "resolution": "128x96",
        "num_frames": 9,
        "fps": 8,
    }
    fields.update(overrides)
    return fields


async def wait_for_final(run_id: UUID, timeout_s: float = 300) -> FlowRun:
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} still {run.state_name} after {timeout_s}s")
            await asyncio.sleep(1)


def test_deploy_all_creates_every_deployment(deployed: Deployed) -> None:
    async def read() -> dict[str, Any]:
        async with get_client() as client:
            names = [
                "generate-video/generate-video-process",
                "generate-video/generate-video-kubernetes",
                "generate-video/generate-video-ecs",
                "generate-video/generate-video-wan-i2v",
                "gpuflow-batch/nightly-batch",
                "gpuflow-janitor/janitor",
            ]
            return {name: await client.read_deployment_by_name(name) for name in names}

    found = asyncio.run(read())
    pools = {name: d.work_pool_name for name, d in found.items()}
    assert pools["generate-video/generate-video-kubernetes"] == "gpuflow-kubernetes"
    assert pools["generate-video/generate-video-ecs"] == "gpuflow-ecs"
    assert all(d.enforce_parameter_schema for d in found.values())
    k8s = found["generate-video/generate-video-kubernetes"]
    assert k8s.job_variables["namespace"] == "gpuflow"
    wan = found["generate-video/generate-video-wan-i2v"]
    assert wan.work_pool_name == "gpuflow-kubernetes"
    assert wan.parameters["request"]["job"] == "wan-i2v"
    janitor = found["gpuflow-janitor/janitor"]
    assert janitor.work_queue_name == "maintenance"
    assert [s.schedule.interval.total_seconds() for s in janitor.schedules] == [300]
    assert all(s.active for s in janitor.schedules)
    nightly = found["gpuflow-batch/nightly-batch"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    # The request renders as a form: its fields, with bounds and enums, are in the schema.
    schema = found["generate-video/generate-video-process"].parameter_openapi_schema
    request = schema["definitions"]["VideoRequest"]["properties"]
    assert request["num_frames"]["maximum"] == 241
    assert schema["definitions"]["Priority"]["enum"] == ["high", "normal", "batch"]


def test_bootstrap_created_pools_with_templates_and_priority_queues(deployed: Deployed) -> None:
    async def read() -> tuple[Any, list[Any]]:
        async with get_client() as client:
            pool = await client.read_work_pool("gpuflow-kubernetes")
            queues = await client.read_work_queues(work_pool_name="gpuflow-process")
            return pool, queues

    pool, queues = asyncio.run(read())
    assert pool.type == "kubernetes"
    assert pool.base_job_template == base_job_template("kubernetes")
    priorities = {queue.name: queue.priority for queue in queues}
    assert {name: priorities[name] for name in PRIORITY_QUEUES} == PRIORITY_QUEUES


def test_bootstrap_again_is_safe(
    deployed: Deployed, prefect_server: LocalServer, state_dir: Path
) -> None:
    again = subprocess.run(
        [GPUFLOW, "bootstrap", "--stack-name", deployed.stack, "--gpu-slots", "2"],
        env=cli_env(state_dir, prefect_server), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "updated work pool gpuflow-process" in again.stdout
    assert "created work pool" not in again.stdout


def test_a_run_created_as_the_ui_does_completes_on_the_process_worker(
    deployed: Deployed, layout: EmbeddedLayout
) -> None:
    async def create() -> UUID:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(
                "generate-video/generate-video-process"
            )
            run = await client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"request": request_fields(layout), "stack": deployed.stack},
            )
            return run.id

    run_id = asyncio.run(create())
    run = asyncio.run(wait_for_final(run_id))
    assert run.state is not None and run.state.is_completed(), (
        run.state,
        deployed.worker_log.read_text()[-3000:],
    )
    video = layout.store_root / "outputs" / str(run_id) / "video.mp4"
    facts = probe(video)
    assert (facts.width, facts.height, facts.frames) == (128, 96, 9)
    assert not (layout.nas_root / "workspaces" / str(run_id)).exists()

    # The run told Automations what happened, with the run and the flow run as resources.
    async def run_events() -> dict[str, Any]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=["gpuflow."]),
                    resource=EventResourceFilter(id=[f"gpuflow.run.{run_id}"]),
                ),
                limit=50,
            )
            return {event.event: event for event in page.events}

    deadline = time.monotonic() + 30
    events = asyncio.run(run_events())
    while "gpuflow.run.completed" not in events and time.monotonic() < deadline:
        time.sleep(0.5)
        events = asyncio.run(run_events())
    assert set(events) >= {
        "gpuflow.run.queued",
        "gpuflow.gpu.admitted",
        "gpuflow.job.started",
        "gpuflow.job.progress",
        "gpuflow.run.completed",
    }, sorted(events)
    completed = events["gpuflow.run.completed"]
    assert completed.payload["output_uri"] == str(ObjectUri("file", "", str(video)))
    related = {resource.id: resource.role for resource in completed.related}
    assert related[f"prefect.flow-run.{run_id}"] == "flow-run"


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("num_frames", 999, "999"),
        ("priority", "urgent", "urgent"),
        ("resolution", 640, "640"),
        ("prompt", "", "prompt"),
    ],
)
def test_the_server_rejects_bad_parameters(
    deployed: Deployed, layout: EmbeddedLayout, field: str, value: Any, complaint: str
) -> None:
    async def create() -> None:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(
                "generate-video/generate-video-process"
            )
            await client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"request": request_fields(layout, **{field: value})},
            )

    with pytest.raises(PrefectHTTPStatusError) as refused:
        asyncio.run(create())
    assert refused.value.response.status_code == 409
    assert complaint in refused.value.response.text
