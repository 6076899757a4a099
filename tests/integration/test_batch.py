"""The batch flow against the real deployment and process worker: good and bad lines, rerun."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun

from gpuflow.core.batch_manifest import BatchManifestError
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.pipeline.batch import BATCH_TAG, BatchFailedError, BatchSummary, batch_generate
from gpuflow.storage.local import LocalObjectStore
from tests.integration.test_deployments import request_fields
from tests.support.deployed import Deployed

pytestmark = pytest.mark.integration


def _write_manifest(path: Path, layout: EmbeddedLayout, *, with_invalid: bool) -> None:
    missing = LocalObjectStore(root=layout.store_root).uri_for(
        f"samples/missing-{uuid.uuid4().hex}.png"
    )
    lines: list[Any] = [request_fields(layout, seed=seed) for seed in (11, 12)]
    lines.append(request_fields(layout, image_uri=missing))  # valid, fails when it runs
    if with_invalid:
        lines.insert(1, request_fields(layout, num_frames=10))
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


async def _batch_runs(batch: str) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[BATCH_TAG + batch]))
        )


def _run_batch(manifest: Path, deployed: Deployed, batch: str, **options: Any) -> BatchSummary:
    async def run() -> BatchSummary:
        summary: BatchSummary = await batch_generate(
            manifest=str(manifest),
            stack=deployed.stack,
            batch_name=batch,
            poll_interval_s=0.5,
            **options,
        )
        return summary

    return asyncio.run(run())


def test_an_invalid_manifest_runs_nothing(
    deployed: Deployed, layout: EmbeddedLayout, tmp_path: Path
) -> None:
    manifest = tmp_path / "requests.jsonl"
    _write_manifest(manifest, layout, with_invalid=True)
    batch = f"invalid-{uuid.uuid4().hex[:6]}"
    with pytest.raises(BatchManifestError) as refused:
        _run_batch(manifest, deployed, batch)
    assert "line 2: invalid request: num_frames=10" in str(refused.value)
    assert asyncio.run(_batch_runs(batch)) == []


def test_batch_runs_valid_lines_bounded_and_a_rerun_runs_only_failures(
    deployed: Deployed, layout: EmbeddedLayout, tmp_path: Path
) -> None:
    manifest = tmp_path / "requests.jsonl"
    _write_manifest(manifest, layout, with_invalid=True)
    batch = f"mixed-{uuid.uuid4().hex[:6]}"

    with pytest.raises(BatchFailedError) as first:
        _run_batch(manifest, deployed, batch, skip_invalid=True, max_in_flight=2)
    summary = first.value.summary
    assert (summary.total, summary.succeeded, summary.failed, summary.invalid) == (3, 2, 1, 1)
    by_line = {row.line: row for row in summary.rows}
    assert by_line[2].state == "Invalid" and "num_frames" in by_line[2].note
    assert by_line[4].state == "Failed" and by_line[4].output_uri is None
    for line in (1, 3):
        uri = by_line[line].output_uri
        assert by_line[line].state == "Completed" and uri is not None
        assert Path(uri.removeprefix("file://")).is_file()

    runs = asyncio.run(_batch_runs(batch))
    assert len(runs) == 3
    # Never more than max_in_flight runs of the batch between creation and end.
    moments = sorted(
        [(run.created, 1) for run in runs] + [(run.end_time, -1) for run in runs],
        key=lambda moment: (moment[0], moment[1]),
    )
    in_flight = peak = 0
    for _, change in moments:
        in_flight += change
        peak = max(peak, in_flight)
    assert peak <= 2

    async def table() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"batch-{batch}"]))
            )

    rows = json.loads(str(asyncio.run(table())[0].data))
    assert [row["state"] for row in rows] == [
        "Completed", "Invalid", "Completed", "Failed",
    ]  # fmt: skip

    with pytest.raises(BatchFailedError) as rerun:
        _run_batch(manifest, deployed, batch, skip_invalid=True, max_in_flight=2)
    again = rerun.value.summary
    assert again.skipped_succeeded_before == 2
    assert (again.succeeded, again.failed) == (2, 1)
    assert len(asyncio.run(_batch_runs(batch))) == 4, "the rerun ran more than the failure"
