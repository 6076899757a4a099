"""The stack: one saved block that says where every step of the pipeline runs.

A flow loads one stack by name; everything it needs (object store, NAS, compute
target, watermark, GPU limit) hangs off it. The embedded default and production
differ only in the stack's values.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator
from pydantic.json_schema import GenerateJsonSchema

from blocks.ecs import EcsTask
from blocks.environment import EnvironmentFabric
from blocks.http_source import HttpSource
from blocks.kubernetes import KubernetesPyTorchJob
from blocks.local import LocalSubprocess
from blocks.model_cache import ModelCache
from blocks.object_store import LocalObjectStore, ObjectStore, ObjectUri
from blocks.s3 import S3ObjectStore
from blocks.watermark import Watermark
from gpuflow.admission import AdmissionQueue, admission_queue
from gpuflow.job_registry import JobRegistry
from gpuflow.request import ModelRef

_SchemaKey = tuple[type, bool, str, type[GenerateJsonSchema], str]
_JSON_SCHEMAS: dict[_SchemaKey, dict[str, Any]] = {}


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
    object_store: LocalObjectStore | S3ObjectStore
    model_store: LocalObjectStore | S3ObjectStore | HttpSource | None = Field(
        default=None, description="Where models_uri lives when not in object_store (e.g. https)."
    )
    models_uri: str = Field(description="Prefix of model sources: <models_uri>/<name>/<revision>/.")
    outputs_uri: str = Field(description="Prefix under which each run uploads its results.")
    compute: LocalSubprocess | KubernetesPyTorchJob | EcsTask
    postprocess_compute: LocalSubprocess | KubernetesPyTorchJob | EcsTask | None = Field(
        default=None,
        description="Where postprocess runs: None in the flow's own process, or a compute "
        "target (e.g. an ECS task on Fargate).",
    )
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
    fair_admission: bool = Field(
        default=True,
        description="Queue GPU requests by priority, then arrival, before they take slots.",
    )
    admission_url: SecretStr | None = Field(
        default=None,
        description=(
            "Admission queue database: postgresql://user:password@host/db when flows run on "
            "several hosts; unset: a SQLite file on the NAS (one host)."
        ),
    )
    admission_ttl_s: float = Field(
        default=30.0, ge=5, le=3600, description="A silent waiter's entry is dropped after this."
    )

    # The signature of Prefect's Block.model_json_schema, which lacks pydantic's union_format.
    @classmethod
    def model_json_schema(  # type: ignore[override]
        cls,
        by_alias: bool = True,
        ref_template: str = "#/definitions/{model}",
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: Literal["validation", "serialization"] = "validation",
    ) -> dict[str, Any]:
        """The JSON schema, generated once per process. Prefect asks for it once per field
        on every save; with the unions of nested blocks above, generating it each time
        made one save of the stack take seconds of CPU."""
        key: _SchemaKey = (cls, by_alias, ref_template, schema_generator, mode)
        if key not in _JSON_SCHEMAS:
            _JSON_SCHEMAS[key] = super().model_json_schema(
                by_alias, ref_template, schema_generator, mode
            )
        return copy.deepcopy(_JSON_SCHEMAS[key])

    @model_validator(mode="after")
    def _nas_at_one_path(self) -> GpuflowStack:
        for step, target in (("compute", self.compute), ("postprocess", self.postprocess_compute)):
            if isinstance(target, EcsTask):
                target.require_nas_at(self.nas_root, step)
        return self

    @property
    def model_cache(self) -> ModelCache:
        return ModelCache(root=self.nas_root / "models")

    @property
    def models_store(self) -> ObjectStore:
        return self.model_store or self.object_store

    @property
    def environments(self) -> EnvironmentFabric:
        return EnvironmentFabric(root=self.nas_root)

    def model_source(self, model: ModelRef) -> str:
        return str(ObjectUri.parse(self.models_uri).join(model.name, model.revision))

    def output_uri(self, run_id: str, name: str) -> str:
        return str(ObjectUri.parse(self.outputs_uri).join(run_id, name))

    def job_dir(self, job: str) -> Path:
        return self.jobs_root / job

    def admission_queue(self) -> AdmissionQueue:
        if self.admission_url is None:
            return admission_queue(f"sqlite:///{self.nas_root / 'admission.sqlite3'}")
        return admission_queue(self.admission_url.get_secret_value())

    @property
    def job_registry(self) -> JobRegistry:
        return JobRegistry(self.nas_root / "gpu-jobs")

    def gpu_limits(self, gpu_type: str | None) -> list[str]:
        """The limits a job takes slots of: the pool, and its GPU type's pool if it names one."""
        return [self.gpu_limit] + ([f"{self.gpu_limit}:{gpu_type}"] if gpu_type else [])
