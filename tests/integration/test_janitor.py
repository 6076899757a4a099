"""The janitor against a tree of many workspaces and real flow runs on a real server."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from gpuflow.core.request import ModelRef
from gpuflow.core.workspace import Workspace, run_id_for
from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.housekeeping import NasUnavailableError
from gpuflow.pipeline.janitor import JanitorPolicy, JanitorReport, janitor
from gpuflow.storage.local import LocalObjectStore
from gpuflow.storage.model_cache import MANIFEST

pytestmark = pytest.mark.integration

HOUR = 3600.0
PAYLOAD = 1000  # bytes in each workspace's output file


@flow(name="janitor-test-subject")
def _subject() -> None:
    """A flow whose runs the test puts into the states it needs (never executed)."""


async def _runs_in_states(states: list[StateType]) -> list[str]:
    async with get_client() as client:
        ids = []
        for state_type in states:
            run = await client.create_flow_run(_subject, state=State(type=state_type))
            ids.append(str(run.id))
        return ids


def _workspace(nas: Path, run_id: str, age_s: float, *, keep_for_s: float | None = None) -> Path:
    workspace = Workspace.create(nas, run_id)
    workspace.output_path("raw.mp4").write_bytes(b"x" * PAYLOAD)
    if keep_for_s is not None:
        workspace.keep_after_failure(keep_for_s, "JobFailedError: exit code 4")
    stamp = time.time() - age_s
    os.utime(workspace.root, (stamp, stamp))
    return workspace.root


@pytest.fixture
def janitor_stack(
    prefect_server: LocalServer, layout: EmbeddedLayout, tmp_path: Path, gpu_limit_name: str
) -> str:
    """A stack whose NAS is this test's own directory, with GPU limits of its own."""
    name = f"janitor-{uuid.uuid4().hex[:8]}"
    stack = layout.stack().model_copy(
        update={"nas_root": tmp_path / "nas", "gpu_limit": gpu_limit_name}
    )
    asyncio.run(bootstrap(stack, name, gpu_slots=4, per_type={"h100": 2}))
    return name


def _run_janitor(stack: str, **policy: Any) -> JanitorReport:
    return asyncio.run(janitor(stack=stack, policy=JanitorPolicy(**policy)))


def test_janitor_removes_only_stale_workspaces_of_finished_runs(
    janitor_stack: str, tmp_path: Path, gpu_limit_name: str
) -> None:
    nas = tmp_path / "nas"
    active_types = [StateType.RUNNING, StateType.PENDING, StateType.PAUSED, StateType.CANCELLING]
    active = asyncio.run(_runs_in_states(active_types))
    finished = asyncio.run(
        _runs_in_states([StateType.COMPLETED, StateType.FAILED, StateType.CRASHED])
    )
    failed_kept = asyncio.run(_runs_in_states([StateType.FAILED]))
    expected_removed: set[str] = set()

    for run_id in active:  # old, but their runs are active: never touched
        _workspace(nas, run_id, age_s=48 * HOUR)
    for run_id in finished:  # old and finished (crashed runs leave no marker)
        _workspace(nas, run_id, age_s=48 * HOUR)
        expected_removed.add(run_id)
    # A failed run kept for debugging: old, but its keep time is not over.
    _workspace(nas, failed_kept[0], age_s=48 * HOUR, keep_for_s=HOUR)
    # Failed runs whose keep time is over go, however young.
    for _ in range(20):
        run_id = str(uuid.uuid4())
        _workspace(nas, run_id, age_s=60, keep_for_s=-1)
        expected_removed.add(run_id)
    # Many runs the API no longer knows (deleted, or from a wiped server): old ones go.
    for _ in range(200):
        run_id = str(uuid.uuid4())
        _workspace(nas, run_id, age_s=30 * HOUR)
        expected_removed.add(run_id)
    young = [str(uuid.uuid4()) for _ in range(50)]
    for run_id in young:
        _workspace(nas, run_id, age_s=HOUR)
    # Runs outside Prefect have no flow run to ask about: their files alone decide.
    old_local, young_local = run_id_for(None), run_id_for(None)
    _workspace(nas, old_local, age_s=30 * HOUR)
    _workspace(nas, young_local, age_s=HOUR)
    expected_removed.add(old_local)
    young.append(young_local)
    (nas / "workspaces" / "lost+found").mkdir()
    (nas / "workspaces" / "notes.txt").write_text("not a workspace")

    report = _run_janitor(janitor_stack, max_age_hours=24, disk_warning_percent=100)

    remaining = {path.name for path in (nas / "workspaces").iterdir()}
    assert remaining == {*active, failed_kept[0], *young, "lost+found", "notes.txt"}
    assert set(report.workspaces.removed_run_ids) == expected_removed
    cleanup = report.workspaces
    assert cleanup.scanned == len(active) + len(finished) + 1 + 20 + 200 + 52
    assert cleanup.removed == len(expected_removed)
    assert cleanup.bytes_freed >= PAYLOAD * len(expected_removed)
    assert cleanup.bytes_freed < (PAYLOAD + 1000) * len(expected_removed)
    assert (cleanup.kept_active, cleanup.kept_young, cleanup.kept_failed) == (4, 51, 1)
    assert cleanup.unrecognised == 2
    assert not report.disk_warning
    assert [(s.name, s.active_slots, s.limit) for s in report.gpu_slots] == [
        (gpu_limit_name, 0, 4),
        (f"{gpu_limit_name}:h100", 0, 2),
    ]


def test_dry_run_reports_without_removing(janitor_stack: str, tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    stale = [_workspace(nas, str(uuid.uuid4()), age_s=48 * HOUR) for _ in range(5)]
    report = _run_janitor(janitor_stack, max_age_hours=24, dry_run=True)
    assert report.workspaces.removed == 5
    assert report.workspaces.bytes_freed >= 5 * PAYLOAD
    assert all(path.is_dir() for path in stale)


def test_disk_above_the_threshold_emits_a_warning_event(janitor_stack: str, tmp_path: Path) -> None:
    (tmp_path / "nas").mkdir()
    report = _run_janitor(janitor_stack, disk_warning_percent=0.001)
    assert report.disk_warning
    assert report.disk_used_percent > 0
    resource_id = f"gpuflow.nas.{tmp_path / 'nas'}"

    async def warnings() -> list[Any]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["gpuflow.nas.disk-warning"]),
                    resource=EventResourceFilter(id=[resource_id]),
                ),
                limit=10,
            )
            return list(page.events)

    deadline = time.monotonic() + 30
    events = asyncio.run(warnings())
    while not events and time.monotonic() < deadline:
        time.sleep(0.5)
        events = asyncio.run(warnings())
    assert events, "no gpuflow.nas.disk-warning event reached the server"
    assert events[0].payload["threshold_percent"] == 0.001
    assert events[0].payload["used_percent"] == pytest.approx(report.disk_used_percent, abs=1)


def test_bad_policy_values_are_refused() -> None:
    with pytest.raises(ValueError, match="disk_warning_percent"):
        JanitorPolicy(disk_warning_percent=150)
    with pytest.raises(ValueError, match="max_age_hours"):
        JanitorPolicy(max_age_hours=0)


def test_a_missing_nas_is_named(janitor_stack: str, tmp_path: Path) -> None:
    with pytest.raises(NasUnavailableError, match=f"NAS root {tmp_path / 'nas'} does not exist"):
        _run_janitor(janitor_stack)


def test_the_janitor_keeps_the_model_cache_within_its_budget(
    prefect_server: LocalServer, layout: EmbeddedLayout, tmp_path: Path, gpu_limit_name: str
) -> None:
    store = LocalObjectStore(root=tmp_path / "store")
    nas = tmp_path / "nas"
    stack = layout.stack().model_copy(
        update={"nas_root": nas, "gpu_limit": gpu_limit_name, "model_cache_max_bytes": 2500}
    )
    cache = stack.model_cache
    models = [ModelRef(name="m", revision=f"r{number}") for number in range(3)]
    for age, model in zip((3 * HOUR, 2 * HOUR, 1 * HOUR), models, strict=True):
        source = tmp_path / "store" / "models" / model.revision
        source.mkdir(parents=True)
        (source / "weights.bin").write_bytes(b"w" * 1000)
        path = cache.ensure(model, store, store.uri_for(f"models/{model.revision}")).path
        stamp = time.time() - age
        os.utime(path / MANIFEST, (stamp, stamp))  # last use
    name = f"janitor-{uuid.uuid4().hex[:8]}"
    asyncio.run(bootstrap(stack, name, gpu_slots=4))

    with cache.hold(models[0]):  # the oldest is in use: it stays, the next oldest goes
        report = _run_janitor(name)

    assert report.models_evicted == [str(cache.model_dir(models[1]))]
    assert [cache.is_ready(model) for model in models] == [True, False, True]
