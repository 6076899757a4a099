"""The prebuild flow against a real Prefect server, with real uv builds."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.objects import State
from prefect.states import get_state_exception

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.prebuild import prebuild_environments
from tests.support.env_kit import make_job, set_source_marker

pytestmark = pytest.mark.integration


def _save_stack(layout: EmbeddedLayout, nas: Path, jobs: Path) -> str:
    name = f"prebuild-{uuid.uuid4().hex[:8]}"
    layout.stack().model_copy(update={"nas_root": nas, "jobs_root": jobs}).save(name)
    return name


def test_prebuild_builds_changed_jobs_only_and_reports_broken_ones(
    prefect_server: LocalServer,
    layout: EmbeddedLayout,
    tmp_path: Path,
    wheelhouse: Path,
    lock_cache: Path,
) -> None:
    jobs = tmp_path / "jobs"
    demo = make_job(jobs / "demo", str(wheelhouse), lock_cache)
    stack = _save_stack(layout, tmp_path / "nas", jobs)

    first = prebuild_environments(stack=stack)
    assert [(r["job"], r["built"]) for r in first] == [("demo", True)]
    again = prebuild_environments(stack=stack)
    assert [(r["key"], r["built"]) for r in again] == [(first[0]["key"], False)]

    # A job definition changes and another job arrives with a lock uv cannot use.
    set_source_marker(demo, "v2")
    broken = make_job(jobs / "broken", str(wheelhouse), lock_cache)
    lock = broken / "uv.lock"
    lock.write_text(lock.read_text().replace('{ name = "bulkpkg" },', '{ name = "ghost" },', 1))
    state = prebuild_environments(stack=stack, return_state=True)
    assert isinstance(state, State) and state.is_failed()
    error = get_state_exception(state)
    assert isinstance(error, EnvironmentBuildError)
    assert "1 of 2 environments failed" in str(error) and "job broken" in error.details
    layout_nas = layout.stack().model_copy(update={"nas_root": tmp_path / "nas"})
    record = layout_nas.environments.job_record("demo")
    assert record is not None and record.history == [first[0]["key"]]
    assert layout_nas.environments.ready(record.current)


def test_prebuild_refuses_unknown_jobs_naming_them(
    prefect_server: LocalServer, layout: EmbeddedLayout, tmp_path: Path
) -> None:
    (tmp_path / "jobs").mkdir()
    stack = _save_stack(layout, tmp_path / "nas", tmp_path / "jobs")
    state = prebuild_environments(stack=stack, jobs=["nope"], return_state=True)
    assert isinstance(state, State) and state.is_failed()
    assert "unknown job(s) ['nope']" in str(get_state_exception(state))
