"""Orphaned ECS tasks are stopped, against moto's server and the session's Prefect server.

Tasks are held RUNNING through moto's state manager (see test_ecs_target.py); the flow
runs are real ones on the real Prefect server, moved through real states.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Running
from prefect_aws import AwsCredentials

from gpuflow.compute.base import JobSpec
from gpuflow.compute.ecs.orphans import stop_orphaned_tasks
from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.ecs.taskdef import FLOW_RUN_TAG
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.ecs_orphans import stop_orphaned_ecs_tasks
from tests.ecs.conftest import NAS, all_tasks, ecs_client, recorded
from tests.support.ecs_answers import AnswersProxy

pytestmark = pytest.mark.integration


@flow(name="ecs-reconcile-probe")
def _probe() -> None:
    """Only its flow runs are used: they stand for generate-video runs."""


async def _flow_run_in(state: Any) -> str:
    async with get_client() as client:
        run = await client.create_flow_run(_probe, state=Running())
        if state is not None:
            await client.set_flow_run_state(run.id, state, force=True)
        return str(run.id)


def test_tasks_of_finished_or_missing_flow_runs_are_stopped(
    prefect_server: LocalServer,
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    task_transitions({"progression": "manual", "times": 10**9})
    target = make_target()
    job = JobSpec(name="i2v", argv=["i2v"], workdir=Path("/mnt/gpuflow-nas"), gpus=0)

    async def runs() -> dict[str, str]:
        return {
            "running": await _flow_run_in(None),
            "completed": await _flow_run_in(Completed()),
            "cancelled": await _flow_run_in(Cancelled()),
            "missing": str(uuid.uuid4()),
        }

    flow_runs = asyncio.run(runs())
    tasks = {name: target.start_task(job, run_id) for name, run_id in flow_runs.items()}
    untagged = target.start_task(job, None)

    orphans = asyncio.run(stop_orphaned_tasks(target))

    assert {orphan.task_arn for orphan in orphans} == {
        tasks["completed"],
        tasks["cancelled"],
        tasks["missing"],
    }
    by_arn = {orphan.task_arn: orphan for orphan in orphans}
    assert by_arn[tasks["missing"]].flow_run_state == "missing"
    assert by_arn[tasks["completed"]].flow_run_state == "COMPLETED"
    ecs = ecs_client(aws)
    still_running = set(ecs.list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"])
    assert still_running == {tasks["running"], untagged}
    stopped = ecs.describe_tasks(cluster=cluster, tasks=[tasks["completed"]])["tasks"][0]
    assert stopped["stoppedReason"] == f"gpuflow: flow run {flow_runs['completed']} is COMPLETED"

    # Running it again finds nothing more to stop.
    assert asyncio.run(stop_orphaned_tasks(target)) == []


def test_the_reconcile_flow_checks_the_stacks_ecs_clusters(
    prefect_server: LocalServer,
    layout: EmbeddedLayout,
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    task_transitions({"progression": "manual", "times": 10**9})
    target = make_target()
    stack_name = f"ecs-{uuid.uuid4().hex[:8]}"
    stack = layout.stack().model_copy(
        update={"postprocess_compute": target, "nas_root": Path(NAS.mount_path)}
    )
    stack.save(stack_name)
    job = JobSpec(name="postprocess", argv=["python"], workdir=Path("/mnt/gpuflow-nas"), gpus=0)
    orphan = target.start_task(job, asyncio.run(_flow_run_in(Completed())))

    assert asyncio.run(stop_orphaned_ecs_tasks(stack=stack_name)) == [orphan]
    assert ecs_client(aws).list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"] == []


def test_a_run_inside_a_flow_tags_its_task_with_the_flow_run_id(
    prefect_server: LocalServer,
    make_target: Callable[..., EcsTask],
    aws: AwsCredentials,
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
) -> None:
    task_transitions({"progression": "immediate"})
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    target = make_target()
    job = JobSpec(name="i2v", argv=["i2v"], workdir=Path("/mnt/gpuflow-nas"), gpus=0)

    @flow(name="ecs-tagging-probe")
    async def tagging_probe() -> str:
        async def ignore(line: str) -> None:
            return None

        await target.run(job, ignore)
        return str(flow_run.get_id())

    flow_run_id = asyncio.run(tagging_probe())
    [task] = all_tasks(aws, cluster)
    assert {"key": FLOW_RUN_TAG, "value": flow_run_id} in task["tags"]


def test_run_task_tokens_repeat_within_an_attempt_and_change_with_each_retry(
    prefect_server: LocalServer,
    make_target: Callable[..., EcsTask],
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
    tmp_path: Path,
) -> None:
    task_transitions({"progression": "immediate"})
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    target = make_target()
    job = JobSpec(name="i2v-tokens", argv=[f"{NAS.mount_path}/envs/k/.venv/bin/i2v"],
                  workdir=Path(NAS.mount_path) / "workspaces" / "tokens", gpus=0)  # fmt: skip
    sent_before = len(answers.run_task_requests)

    @flow(name="ecs-token-probe", retries=1, retry_delay_seconds=0)
    async def twice_per_attempt() -> None:
        # Two starts in one attempt stand for one start repeated after a lost answer.
        for _ in range(2):
            assert (await target.run(job, _NoLines())).exit_code == 0
        if flow_run.run_count == 1:
            raise RuntimeError("fail the first attempt: the flow retries")

    asyncio.run(twice_per_attempt())

    tokens = [r["clientToken"] for r in answers.run_task_requests[sent_before:]]
    assert len(tokens) == 4
    assert tokens[0] == tokens[1] and tokens[2] == tokens[3]
    assert tokens[0] != tokens[2]  # the retry starts a task of its own
    assert all(len(token) == 64 for token in tokens)  # RunTask's limit


class _NoLines:
    async def __call__(self, line: str) -> None:
        pass
