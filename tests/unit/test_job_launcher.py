"""The job contract names the env's torchrun where the env has one (jobs/progress/README.md)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from gpuflow.core.request import VideoRequest
from gpuflow.core.workspace import Workspace
from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.ops.embedded import repository_jobs_root
from gpuflow.pipeline.job_contract import job_spec
from gpuflow.storage.model_cache import CachedModel


@pytest.mark.parametrize("has_torchrun", [True, False])
def test_the_job_spec_carries_the_envs_torchrun_only_where_it_exists(
    tmp_path: Path, has_torchrun: bool
) -> None:
    env = ResolvedEnv(key="k1", root=tmp_path / "envs" / "k1", built=False)
    (env.venv / "bin").mkdir(parents=True)
    if has_torchrun:
        env.script("torchrun").write_text("#!/bin/sh\n")
    workspace = Workspace.create(tmp_path, str(uuid.uuid4()))

    job = job_spec(
        VideoRequest(prompt="a cat", image_uri="file:///in.png"),
        repository_jobs_root() / "i2v",
        env,
        CachedModel(tmp_path / "models" / "m", downloaded=False, bytes_downloaded=0),
        tmp_path / "in.png",
        workspace,
        timeout_s=60,
    )

    assert job.torchrun == (str(env.script("torchrun")) if has_torchrun else None)
