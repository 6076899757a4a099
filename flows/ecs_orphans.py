"""The ``stop-orphaned-ecs-tasks`` flow: a prefect.yaml entrypoint."""

from gpuflow.pipeline.ecs_orphans import stop_orphaned_ecs_tasks

__all__ = ["stop_orphaned_ecs_tasks"]
