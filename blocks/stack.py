"""The stack: one saved block that says where every step of the pipeline runs.

A flow loads one stack by name; everything it needs (object store, NAS, compute
target, watermark, GPU limit) hangs off it. The embedded default and production
differ only in the stack's values.
"""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field

from blocks.environment import EnvironmentFabric
from blocks.local import LocalSubprocess
from blocks.model_cache import ModelCache
from blocks.object_store import LocalObjectStore, ObjectUri
from blocks.watermark import Watermark
from gpuflow.request import ModelRef


class GpuflowStack(Block):
    """Where gpuflow's pipeline keeps its data and runs its steps."""

    _block_type_name = "gpuflow stack"
    _block_type_slug = "gpuflow-stack"
    _description = (
        "Object store, NAS, compute target, watermark and GPU limit of one gpuflow setup."
    )

    nas_root: Path = Field(
        description="Shared storage, mounted at this same path in every pod, task and process."
    )
    jobs_root: Path = Field(description="Directory holding the job projects (jobs/<name>/).")
    object_store: LocalObjectStore
    models_uri: str = Field(description="Prefix of model sources: <models_uri>/<name>/<revision>/.")
    outputs_uri: str = Field(description="Prefix under which each run uploads its results.")
    compute: LocalSubprocess
    watermark: Watermark = Field(default_factory=Watermark)
    gpu_limit: str = Field(default="gpu", description="Name of the global concurrency limit.")
    gpu_lease_s: int = Field(
        default=300, ge=60, le=86400, description="Lease on GPU slots, renewed while a job runs."
    )
    job_timeout_s: float = Field(default=3600.0, gt=0)
    keep_failed_workspaces_s: int = Field(
        default=86400,
        ge=0,
        description="How long a failed run's workspace stays on the NAS for debugging.",
    )

    @property
    def model_cache(self) -> ModelCache:
        return ModelCache(root=self.nas_root / "models")

    @property
    def environments(self) -> EnvironmentFabric:
        return EnvironmentFabric(root=self.nas_root)

    def model_source(self, model: ModelRef) -> str:
        return str(ObjectUri.parse(self.models_uri).join(model.name, model.revision))

    def output_uri(self, run_id: str, name: str) -> str:
        return str(ObjectUri.parse(self.outputs_uri).join(run_id, name))

    def job_dir(self, job: str) -> Path:
        return self.jobs_root / job

    def gpu_limits(self, gpu_type: str | None) -> list[str]:
        """The limits a job takes slots of: the pool, and its GPU type's pool if it names one."""
        return [self.gpu_limit] + ([f"{self.gpu_limit}:{gpu_type}"] if gpu_type else [])
