"""Where a run is: its state, the current step and its progress artifact, in three API calls."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort
from prefect.exceptions import ObjectNotFound

from gpuflow.core.errors import NotFoundError


class RunNotFoundError(NotFoundError):
    """No flow run with that id on the server."""


@dataclass(frozen=True)
class RunSnapshot:
    run: FlowRun
    step: str | None
    percent: float | None
    progress: str | None

    @property
    def state_name(self) -> str:
        return (self.run.state.name if self.run.state else None) or "Unknown"

    @property
    def state_type(self) -> StateType | None:
        return self.run.state.type if self.run.state else None

    @property
    def finished(self) -> bool:
        return self.run.state is not None and self.run.state.is_final()


def parse_run_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise RunNotFoundError(f"{text!r} is not a flow run id (a UUID)") from None


async def read_run(client: PrefectClient, run_id: UUID) -> FlowRun:
    try:
        return await client.read_flow_run(run_id)
    except ObjectNotFound:
        raise RunNotFoundError(f"no flow run {run_id} on {client.api_url}") from None


async def snapshot(client: PrefectClient, run_id: UUID) -> RunSnapshot:
    run = await read_run(client, run_id)
    running = await client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))
        ),
        sort=TaskRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    progress = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            type=ArtifactFilterType(any_=["progress"]),
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    percent = float(str(progress[0].data)) if progress else None
    text = progress[0].description if progress else None
    return RunSnapshot(run, running[0].name if running else None, percent, text)
