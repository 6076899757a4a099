"""Reconciliation: stop ECS tasks whose flow run is gone.

A flow whose process died (node lost, OOM-killed, cancelled by killing its process)
cannot stop the ECS task it started. Every task gpuflow starts carries the tag
``gpuflow:flow-run-id``; this step lists the cluster's running gpuflow tasks, asks the
Prefect API about each one's flow run, and stops those whose run has ended, is being
cancelled, or no longer exists. Tasks without the tag, or with a value that is not a
flow-run id, are left alone: they are not ours to judge.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger

from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.ecs.taskdef import FLOW_RUN_TAG

# A flow run in one of these states no longer waits on its task.
_FINISHED = frozenset(
    {
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.CRASHED,
        StateType.CANCELLED,
        StateType.CANCELLING,
    }
)
_logger = get_logger("gpuflow.ecs")


@dataclass(frozen=True)
class OrphanTask:
    task_arn: str
    flow_run_id: str
    flow_run_state: str  # the run's state type, or "missing"


async def _flow_run_state(flow_run_id: uuid.UUID) -> StateType | None:
    async with get_client() as client:
        try:
            run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return None
    return run.state.type if run.state else None


async def stop_orphaned_tasks(target: EcsTask) -> list[OrphanTask]:
    """Stop the running tasks of ``target``'s cluster whose flow run is no longer active."""
    tasks = await asyncio.to_thread(target.running_gpuflow_tasks)
    orphans: list[OrphanTask] = []
    for task in tasks:
        tags = {tag.get("key"): tag.get("value") for tag in task.get("tags") or []}
        tagged = tags.get(FLOW_RUN_TAG)
        if not tagged:
            continue
        try:
            flow_run_id = uuid.UUID(tagged)
        except ValueError:
            _logger.warning(
                "Task %s has a %s tag that is not a flow-run id: %r",
                task["taskArn"],
                FLOW_RUN_TAG,
                tagged,
            )
            continue
        state = await _flow_run_state(flow_run_id)
        if state is not None and state not in _FINISHED:
            continue
        label = state.value if state is not None else "missing"
        await asyncio.to_thread(
            target.stop_task, task["taskArn"], f"gpuflow: flow run {flow_run_id} is {label}"
        )
        _logger.info(
            "Stopped orphaned ECS task %s (flow run %s is %s)", task["taskArn"], flow_run_id, label
        )
        orphans.append(OrphanTask(task["taskArn"], str(flow_run_id), label))
    return orphans
