"""What the compute backends need to run a job inside a prebuilt environment.

The local subprocess backend runs ``ResolvedEnv.script(...)`` directly. A pod, an
ECS task or a Ray worker runs on another host: it needs the NAS mounted at the
same path as here (venvs are not relocatable) and the interpreter's path on it;
nothing is installed at start. ``container_env`` gives the Kubernetes and ECS
backends both; ``ray_runtime_env`` turns an env into a Ray ``runtime_env``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.envs.catalog import EnvCatalog, ResolvedEnv


@dataclass(frozen=True)
class ContainerEnv:
    """A prebuilt env as a container sees it: mount the NAS, run the interpreter."""

    key: str
    nas_mount_path: Path  # mount the NAS volume here (the same path as on the flow's host)
    venv: Path
    python: Path
    base_python: str  # the interpreter the venv points at: must exist in the container too
    base_python_on_nas: bool  # True when it is a uv-managed Python on the NAS
    env_vars: dict[str, str] = field(default_factory=dict)

    def argv(self, script: str, *args: str) -> list[str]:
        """A console script of the env with its arguments, as an argv list."""
        return [str(self.venv / "bin" / script), *args]


def container_env(fabric: EnvCatalog, env: ResolvedEnv) -> ContainerEnv:
    """The mount and interpreter paths a Kubernetes pod or an ECS task needs."""
    metadata = fabric.metadata(env.key)
    if metadata is None:
        raise EnvironmentBuildError(f"environment {env.key} is not ready on {fabric.root}")
    nas = fabric.root.resolve()
    if not env.root.resolve().is_relative_to(nas):
        raise EnvironmentBuildError(f"environment {env.root} is not under the NAS root {nas}")
    return ContainerEnv(
        key=env.key,
        nas_mount_path=nas,
        venv=env.venv,
        python=env.python,
        base_python=metadata.base_python,
        base_python_on_nas=Path(metadata.base_python).resolve().is_relative_to(nas),
        env_vars={"VIRTUAL_ENV": str(env.venv), "GPUFLOW_ENV_KEY": env.key},
    )


def ray_runtime_env(env: ResolvedEnv, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` whose workers start in the prebuilt env: no per-node install.

    Ray's ``py_executable`` names the interpreter of the worker processes; every Ray
    node must mount the NAS at the same path. Use it as
    ``ray.init(runtime_env=ray_runtime_env(env))`` or ``task.options(runtime_env=...)``.
    """
    return {
        "py_executable": str(env.python),
        "env_vars": {
            "VIRTUAL_ENV": str(env.venv),
            "GPUFLOW_ENV_KEY": env.key,
            **(env_vars or {}),
        },
    }
