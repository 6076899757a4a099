"""`prefect deploy --all` against a real server, then runs as the Prefect UI creates them."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun, State
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Scheduled
from prefect_aws.workers.ecs_worker import ECSJobConfiguration

from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.ops.work_pools import PRIORITY_QUEUES, base_job_template
from gpuflow.storage.uri import ObjectUri
from tests.support.deployed import DEPLOYED_IMAGE, GPUFLOW, PREFECT, REPO, Deployed, cli_env
from tests.support.media import probe

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(472)]


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
                "generate-video/generate-video-docker",
                "gpuflow-batch/nightly-batch",
                "gpuflow-janitor/janitor",
            ]
            return {name: await client.read_deployment_by_name(name) for name in names}

    found = asyncio.run(read())
    pools = {name: d.work_pool_name for name, d in found.items()}
    assert pools["generate-video/generate-video-kubernetes"] == "gpuflow-kubernetes"
    assert pools["generate-video/generate-video-ecs"] == "gpuflow-ecs"
    assert pools["generate-video/generate-video-docker"] == "gpuflow-docker"
    # Every container deployment runs the image the deploy's build step named.
    for name in ("kubernetes", "ecs", "wan-i2v", "docker"):
        job_variables = found[f"generate-video/generate-video-{name}"].job_variables
        assert job_variables["image"] == DEPLOYED_IMAGE, name
    assert all(d.enforce_parameter_schema for d in found.values())
    k8s = found["generate-video/generate-video-kubernetes"]
    # The pool's template reads the namespace from a Prefect variable: none is hard-coded.
    assert "namespace" not in k8s.job_variables
    assert k8s.job_variables["cpu_request"] == "500m"
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


def test_deploying_the_process_pool_needs_no_docker_and_no_registry(
    deployed: Deployed, prefect_server: LocalServer, state_dir: Path
) -> None:
    env = {**cli_env(state_dir, prefect_server), "GPUFLOW_DOCKER": "/nonexistent/docker"}
    for name in ("GPUFLOW_IMAGE", "GPUFLOW_IMAGE_REGISTRY"):
        env.pop(name, None)
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", "generate-video-process"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = deploy.stdout + deploy.stderr
    assert deploy.returncode == 0, output[-4000:]
    assert "built " not in output


def test_every_deployment_of_prefect_yaml_creates_a_flow_run(
    deployed: Deployed, layout: EmbeddedLayout
) -> None:
    # What a user does after `gpuflow bootstrap` and `prefect deploy --all`: a run of each
    # deployment, which the server validates against its pool's template (required job
    # variables included). Scheduled a day ahead, so that no worker starts them.
    names = [
        entry["name"]
        for entry in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    ]

    async def create_runs() -> dict[str, UUID]:
        runs: dict[str, UUID] = {}
        later: State[Any] = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1))
        async with get_client() as client:
            found = await client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names))
            )
            assert sorted(d.name for d in found) == sorted(names)
            try:
                for deployment in found:
                    schema = deployment.parameter_openapi_schema or {}
                    parameters = (
                        {"request": request_fields(layout)}
                        if "request" in schema.get("required", [])
                        else {}
                    )
                    run = await client.create_flow_run_from_deployment(
                        deployment.id, parameters=parameters, state=later
                    )
                    runs[deployment.name] = run.id
            finally:
                for run_id in runs.values():
                    await client.delete_flow_run(run_id)
        return runs

    assert sorted(asyncio.run(create_runs())) == sorted(names)


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
    # The embedded stack's flows never run on ECS: what the ECS pool lacks is a note, not
    # a warning; the Kubernetes pool gets gpuflow's defaults.
    assert "needs Prefect variable" not in again.stderr, again.stderr
    assert "gpuflow-ecs (this stack's flows do not run there) has no" in again.stdout
    assert "gpuflow_efs_file_system_id" in again.stdout
    assert "variable gpuflow_k8s_namespace" in again.stdout


def test_bootstrap_with_an_ecs_stack_gives_the_ecs_deployment_its_cluster_roles_and_nas(
    deployed: Deployed, prefect_server: LocalServer, state_dir: Path
) -> None:
    boot = subprocess.run(
        [GPUFLOW, "bootstrap", "--stack-file", str(REPO / "blocks" / "ecs.yaml"),
         "--stack-name", f"{deployed.stack}-ecs", "--gpu-slots", "2", "--pool-type", "ecs"],
        env=cli_env(state_dir, prefect_server), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert boot.returncode == 0, boot.stderr
    assert "needs Prefect variable" not in boot.stderr, boot.stderr

    # The task definition the ECS worker would register for a run of the deployment.
    async def render() -> ECSJobConfiguration:
        async with get_client() as client:
            pool = await client.read_work_pool("gpuflow-ecs")
            deployment = await client.read_deployment_by_name("generate-video/generate-video-ecs")
            return cast(
                ECSJobConfiguration,
                await ECSJobConfiguration.from_template_and_values(
                    pool.base_job_template, deployment.job_variables or {}, client=client
                ),
            )

    configuration = asyncio.run(render())
    stack = yaml.safe_load((REPO / "blocks" / "ecs.yaml").read_text())["compute"]
    definition = configuration.task_definition
    [volume] = definition["volumes"]
    efs = volume["efsVolumeConfiguration"]
    assert efs["fileSystemId"] == stack["nas"]["file_system_id"]
    assert efs["authorizationConfig"]["accessPointId"] == stack["nas"]["access_point_id"]
    [container] = definition["containerDefinitions"]
    assert container["mountPoints"][0]["containerPath"] == stack["nas"]["mount_path"]
    assert definition["taskRoleArn"] == stack["task_role_arn"]
    assert configuration.execution_role_arn == stack["execution_role_arn"]
    assert configuration.cluster == stack["cluster"]


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
