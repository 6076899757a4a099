"""Compute targets: where a GPU job runs.

``ComputeTarget`` is the interface; ``gpuflow.compute.backends`` registers the
implementations (a local subprocess, a Kubernetes PyTorchJob, an ECS task). A target receives a
``JobSpec`` — argv and environment as data, never a shell string — runs it, hands
every output line to the caller, and returns the exit code. Cancelling the
awaiting task stops the job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field

from gpuflow.envs.records import BaseInterpreter

LineHandler = Callable[[str], Awaitable[None]]


class JobSpec(BaseModel):
    """One job to run: argv as a list (each element reaches the job verbatim)."""

    model_config = ConfigDict(frozen=True)

    name: str
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: Path
    gpus: int = Field(ge=0)
    gpu_type: str | None = Field(default=None, description="GPU type to run on; any when unset.")
    timeout_s: float = Field(default=3600.0, gt=0)
    torchrun: str | None = Field(
        default=None,
        description="The job env's torchrun, where it has one: a backend that starts more "
        "than one process launches argv under it (jobs/progress/README.md).",
    )
    interpreter: BaseInterpreter | None = Field(
        default=None,
        description="The interpreter the job's env was built on, where it runs in one: "
        "backends check the job's image (or host) has it before starting argv "
        "(gpuflow.compute.interpreter_check).",
    )


@dataclass(frozen=True)
class JobResult:
    exit_code: int
    duration_s: float
    devices: tuple[str, ...]
    last_lines: tuple[str, ...]


class ComputeTarget(Block, ABC):
    """Where a job runs. Implementations: local subprocess, Kubernetes, ECS."""

    _block_schema_capabilities: ClassVar[list[str]] = ["compute-target"]
    # The interpreter that runs gpuflow's own job modules (postprocess) where jobs run:
    # the image's, for targets that run containers.
    gpuflow_python: ClassVar[str] = "python"

    def require_nas_at(self, nas_root: Path, step: str) -> None:
        """Refuse a target whose jobs would see the NAS elsewhere than at ``nas_root``:
        venvs on the NAS are not relocatable. Local jobs share the flow's filesystem."""

    def flow_pool_variables(self) -> dict[str, Any]:
        """Prefect variables that this target's values give the work pool running its flows
        (the cluster, roles and NAS there), by name; none for a target beside the flow."""
        return {}

    def preview(self, job: JobSpec) -> dict[str, Any]:
        """What ``run`` would start for ``job``, as data, creating nothing: what
        ``gpuflow submit --dry-run`` shows. Targets that send a manifest show it."""
        return {"argv": job.argv, "workdir": str(job.workdir), "gpus": job.gpus}

    @abstractmethod
    async def run(self, job: JobSpec, on_line: LineHandler) -> JobResult:
        """Run ``job`` to completion, calling ``on_line`` for each line it prints."""
