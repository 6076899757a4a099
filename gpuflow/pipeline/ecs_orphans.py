"""A flow to schedule: stop ECS tasks whose flow run has ended (see gpuflow.compute.ecs.orphans)."""

from __future__ import annotations

from typing import cast

from prefect import flow, get_run_logger

from gpuflow.compute.ecs.orphans import stop_orphaned_tasks
from gpuflow.compute.ecs.target import EcsTask
from gpuflow.pipeline.stack import GpuflowStack


@flow(name="stop-orphaned-ecs-tasks")
async def stop_orphaned_ecs_tasks(stack: str = "default") -> list[str]:
    """Stop the running ECS tasks of the stack's clusters whose flow run is no longer active.

    Args:
        stack: Name of the saved gpuflow-stack block whose ECS targets to check.
    """
    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    targets: dict[str, EcsTask] = {}
    for target in (pipeline.compute, pipeline.postprocess_compute):
        if isinstance(target, EcsTask):
            targets.setdefault(target.cluster, target)  # one pass per cluster is enough
    stopped: list[str] = []
    for target in targets.values():
        orphans = await stop_orphaned_tasks(target)
        stopped.extend(orphan.task_arn for orphan in orphans)
    get_run_logger().info("Stopped %d orphaned ECS task(s) on %s", len(stopped), sorted(targets))
    return stopped
