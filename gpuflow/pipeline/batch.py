"""The batch flow: many requests from a manifest, one run each through the deployment.

    manifest ─► validate every line ─► skip what succeeded before ─► run, at most N in flight
             ─► table artifact: each request's state and output URI

Child runs carry two tags, ``gpuflow-batch:<batch>`` and ``gpuflow-request:<key>``: a rerun
of the same batch asks the API once which requests already succeeded (and adopts runs still
in flight) instead of running them again. Only the runs in flight are polled, in one API
call per poll, so a 1,000-line manifest holds at most ``max_in_flight`` runs at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import BaseModel, Field

from gpuflow.core.batch_manifest import Manifest, ManifestEntry, manifest_format, parse_manifest
from gpuflow.core.errors import GpuflowError
from gpuflow.pipeline.result import artifact_key
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.pipeline.submission import (
    DEFAULT_DEPLOYMENT,
    find_deployment,
    output_uri_in,
    submit_request,
)

BATCH_TAG = "gpuflow-batch:"
REQUEST_TAG = "gpuflow-request:"
_PAGE = 200


class BatchFailedError(GpuflowError):
    """Some requests of a batch did not succeed; a rerun retries only those."""

    def __init__(self, summary: BatchSummary) -> None:
        self.summary = summary
        super().__init__(
            f"batch {summary.batch}: {summary.failed} of {summary.total} request(s) did not "
            f"succeed (rerun the batch to retry only those)"
        )


class BatchRow(BaseModel):
    line: int
    request_key: str
    prompt: str
    state: str
    flow_run_id: str | None = None
    output_uri: str | None = None
    note: str = ""


class BatchSummary(BaseModel):
    batch: str
    total: int
    succeeded: int
    failed: int
    skipped_succeeded_before: int
    invalid: int
    rows: list[BatchRow]


@dataclass
class _Tracked:
    entry: ManifestEntry
    run: FlowRun | None = None
    note: str = ""


def batch_key(manifest: str, name: str | None) -> str:
    """The batch's identity: its name, or the manifest's location."""
    return name or f"manifest-{hashlib.sha256(manifest.encode()).hexdigest()[:16]}"


@task(cache_policy=NO_CACHE)
def read_manifest(pipeline: GpuflowStack, manifest: str) -> Manifest:
    """Read (a local path or an object URI through the stack's store) and validate it."""
    fmt = manifest_format(manifest)
    if "://" in manifest:
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / f"manifest.{fmt}"
            pipeline.object_store.download(manifest, local)
            text = local.read_text(encoding="utf-8")
    else:
        path = Path(manifest)
        if not path.is_file():
            raise GpuflowError(f"manifest {manifest!r}: no such file")
        text = path.read_text(encoding="utf-8")
    return parse_manifest(text, fmt)


async def _previous_runs(
    client: PrefectClient, deployment_id: UUID, batch: str
) -> dict[str, FlowRun]:
    """The latest earlier run of each request of this batch, by request key."""
    latest: dict[str, FlowRun] = {}
    offset = 0
    while True:
        page = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[BATCH_TAG + batch]),
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=_PAGE,
            offset=offset,
        )
        for run in page:
            for tag in run.tags:
                if tag.startswith(REQUEST_TAG):
                    latest[tag.removeprefix(REQUEST_TAG)] = run  # later runs win
        if len(page) < _PAGE:
            return latest
        offset += _PAGE


def _finished(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def _succeeded(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_completed()


@flow(name="gpuflow-batch")
async def batch_generate(
    manifest: Annotated[
        str,
        Field(
            min_length=1,
            description="JSONL or CSV manifest of requests: a local path or an object URI "
            "(file:///..., s3://bucket/batch.jsonl).",
        ),
    ],
    stack: Annotated[str, Field(description="Saved gpuflow-stack block the runs use.")] = (
        "default"
    ),
    deployment: Annotated[
        str, Field(description="Deployment that runs each request (flow/deployment).")
    ] = DEFAULT_DEPLOYMENT,
    max_in_flight: Annotated[
        int, Field(ge=1, le=500, description="Most runs of this batch in flight at a time.")
    ] = 4,
    skip_invalid: Annotated[
        bool, Field(description="Run the valid lines of a manifest that has invalid ones.")
    ] = False,
    batch_name: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            description="Name that identifies the batch across reruns (default: from the "
            "manifest location).",
        ),
    ] = None,
    poll_interval_s: Annotated[
        float, Field(ge=0.2, le=300, description="Seconds between polls of runs in flight.")
    ] = 5.0,
) -> BatchSummary:
    """Run every request of a manifest through a deployment, a bounded number at a time."""
    logger = get_run_logger()
    pipeline = cast(GpuflowStack, await GpuflowStack.aload(stack))
    parsed = read_manifest(pipeline, manifest)
    if parsed.problems:
        if not skip_invalid:
            parsed.require_valid(manifest)
        logger.warning(
            "Skipping %d invalid line(s):\n%s", len(parsed.problems), parsed.problems_text()
        )
    batch = batch_key(manifest, batch_name)
    async with get_client() as client:
        target = await find_deployment(client, deployment)
        previous = await _previous_runs(client, target.id, batch)
        tracked = [_Tracked(entry) for entry in parsed.entries]
        pending: list[_Tracked] = []
        in_flight: dict[UUID, _Tracked] = {}
        skipped = 0
        for item in tracked:
            earlier = previous.get(item.entry.key)
            if earlier is not None and _succeeded(earlier):
                item.run, item.note = earlier, "succeeded before"
                skipped += 1
            elif earlier is not None and not _finished(earlier):
                item.run, item.note = earlier, "adopted from an earlier attempt"
                in_flight[earlier.id] = item
            else:
                pending.append(item)
        logger.info(
            "Batch %s: %d request(s), %d succeeded before, %d to run, at most %d in flight",
            batch, len(tracked), skipped, len(pending) + len(in_flight), max_in_flight,
        )  # fmt: skip
        progress = await acreate_progress_artifact(0.0, description=f"batch {batch}")
        to_run = len(pending) + len(in_flight)
        done = 0
        pending.reverse()  # pop() from the end keeps the manifest's order
        while pending or in_flight:
            while pending and len(in_flight) < max_in_flight:
                item = pending.pop()
                item.run = await submit_request(
                    client,
                    target,
                    item.entry.request,
                    stack,
                    tags=[BATCH_TAG + batch, REQUEST_TAG + item.entry.key],
                )
                in_flight[item.run.id] = item
                _log_state(logger, item.entry.line, item.run, done, to_run)
            await asyncio.sleep(poll_interval_s)
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(in_flight))),
                limit=len(in_flight),
            )
            for run in runs:
                item = in_flight[run.id]
                changed = _state_name(item.run) != _state_name(run)
                item.run = run
                if _finished(run):
                    del in_flight[run.id]
                    done += 1
                if changed:
                    _log_state(logger, item.entry.line, run, done, to_run)
            if to_run:
                await aupdate_progress_artifact(
                    progress, 100.0 * done / to_run, description=f"batch {batch}: {done}/{to_run}"
                )
    rows = [_row(item, pipeline) for item in tracked]
    rows += [
        BatchRow(line=p.line, request_key="", prompt="", state="Invalid", note=p.error)
        for p in parsed.problems
    ]
    rows.sort(key=lambda row: row.line)
    succeeded = sum(1 for item in tracked if item.run is not None and _succeeded(item.run))
    summary = BatchSummary(
        batch=batch,
        total=len(tracked),
        succeeded=succeeded,
        failed=len(tracked) - succeeded,
        skipped_succeeded_before=skipped,
        invalid=len(parsed.problems),
        rows=rows,
    )
    await acreate_table_artifact(
        [row.model_dump() for row in rows],
        key=artifact_key("batch", batch),
        description=f"Batch {batch}: {succeeded}/{len(tracked)} succeeded",
    )
    if summary.failed:
        raise BatchFailedError(summary)
    return summary


def _state_name(run: FlowRun | None) -> str:
    if run is None or run.state is None:
        return "Not run"
    return run.state.name or run.state.type.value.title()


def _log_state(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    line: int,
    run: FlowRun,
    done: int,
    to_run: int,
) -> None:
    """One line per state change of a request's run, so a batch in a terminal (or its flow
    run's logs in the UI) shows where every request is while runs are in flight."""
    message = run.state.message if run.state is not None and _finished(run) else None
    logger.info(
        "line %d: %s (run %s, %s) · %d/%d finished%s",
        line, _state_name(run), run.name, run.id, done, to_run,
        f" · {message}" if message and not _succeeded(run) else "",
    )  # fmt: skip


def _row(item: _Tracked, pipeline: GpuflowStack) -> BatchRow:
    run = item.run
    state = _state_name(run)
    return BatchRow(
        line=item.entry.line,
        request_key=item.entry.key,
        prompt=item.entry.request.prompt[:80],
        state=state,
        flow_run_id=str(run.id) if run is not None else None,
        output_uri=output_uri_in(pipeline, str(run.id)) if run and _succeeded(run) else None,
        note=item.note,
    )
