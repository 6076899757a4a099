"""What Kubernetes, ECS and Ray get from a prebuilt env actually runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.envs.catalog import EnvCatalog, ResolvedEnv
from gpuflow.envs.consumers import container_env, ray_runtime_env

pytestmark = pytest.mark.integration


def test_ray_runtime_env_interpreter_runs_in_the_env(fabric: EnvCatalog, job: Path) -> None:
    env = fabric.resolve(job)
    runtime_env = ray_runtime_env(env, {"EXTRA": "1"})
    assert set(runtime_env) == {"py_executable", "env_vars"}
    probe = subprocess.run(
        [runtime_env["py_executable"], "-c", "import sys, tinytool, bulkpkg; print(sys.prefix)"],
        env={**os.environ, **runtime_env["env_vars"]},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(env.venv)
    assert runtime_env["env_vars"] == {
        "VIRTUAL_ENV": str(env.venv),
        "GPUFLOW_ENV_KEY": env.key,
        "EXTRA": "1",
    }


def test_container_env_names_mount_interpreter_and_argv(fabric: EnvCatalog, job: Path) -> None:
    env = fabric.resolve(job)
    spec = container_env(fabric, env)
    assert spec.nas_mount_path == fabric.root.resolve()
    assert spec.python == env.python and spec.python.is_relative_to(spec.nas_mount_path)
    # Built on the machine's own Python, not a uv-managed one on the NAS: say so.
    assert not spec.base_python_on_nas and Path(spec.base_python).is_dir()
    run = subprocess.run(spec.argv("demo-job"), capture_output=True, text=True)
    assert run.stdout.strip() == "demo-job v1"


def test_container_env_refuses_an_env_that_is_not_ready(fabric: EnvCatalog) -> None:
    missing = ResolvedEnv("0" * 24, fabric.env_dir("0" * 24), built=False)
    with pytest.raises(EnvironmentBuildError, match=r"0{24} is not ready"):
        container_env(fabric, missing)
