"""The stack: one saved block that says where every step of the pipeline runs.

A flow loads one stack by name; everything it needs (object stores, NAS, compute
target, postprocess steps, GPU limit) hangs off it. The embedded default and production
differ only in the stack's values. The kinds of stores, compute targets and steps it
accepts are the registered ones (``OBJECT_STORES``, ``COMPUTE_BACKENDS``,
``POSTPROCESS_STEPS``).
"""

from __future__ import annotations

import copy
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, cast

from prefect.blocks.core import Block
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from pydantic import Field, SecretStr, model_validator
from pydantic.json_schema import GenerateJsonSchema

from gpuflow.compute.backends import COMPUTE_BACKENDS
from gpuflow.compute.base import ComputeTarget, JobSpec
from gpuflow.core.request import ModelRef, Priority
from gpuflow.envs.catalog import EnvCatalog
from gpuflow.gpu.admission.base import AdmissionQueue
from gpuflow.gpu.admission.queues import admission_queue
from gpuflow.gpu.capacity import gpu_limit_names
from gpuflow.gpu.hold import Admission, GpuHold, gpu_hold
from gpuflow.gpu.registry import JobRegistry
from gpuflow.postprocess.base import PostprocessStep
from gpuflow.postprocess.steps import POSTPROCESS_STEPS
from gpuflow.postprocess.watermark import Watermark
from gpuflow.storage.base import ObjectStore
from gpuflow.storage.model_cache import ModelCache
from gpuflow.storage.stores import OBJECT_STORES, store_for
from gpuflow.storage.uri import ObjectUri

if TYPE_CHECKING:
    AnyObjectStore = ObjectStore
    AnyComputeTarget = ComputeTarget
    AnyPostprocessStep = PostprocessStep
else:
    # Unions of the registered block types: Prefect saves and loads each by its type.
    AnyObjectStore = Union[OBJECT_STORES]  # noqa: UP007 (a union built from a tuple)
    AnyComputeTarget = Union[COMPUTE_BACKENDS]  # noqa: UP007
    AnyPostprocessStep = Union[POSTPROCESS_STEPS]  # noqa: UP007

_SchemaKey = tuple[type, bool, str, type[GenerateJsonSchema], str]
_JSON_SCHEMAS: dict[_SchemaKey, dict[str, Any]] = {}


class GpuflowStack(Block):
    """Where gpuflow's pipeline keeps its data and runs its steps."""

    _block_type_name = "gpuflow stack"
    _block_type_slug = "gpuflow-stack"
    _description = (
        "Object stores, NAS, compute target, postprocess steps and GPU limit of one gpuflow setup."
    )

    nas_root: Path = Field(
        description="Shared storage, mounted at this same path in every pod, task and process."
    )
    jobs_root: Path = Field(description="Directory holding the job projects (jobs/<name>/).")
    object_store: AnyObjectStore = Field(
        description="Where results are uploaded; also serves inputs and models of its scheme."
    )
    model_store: AnyObjectStore | None = Field(
        default=None,
        description="A second store for URIs the object store does not serve, e.g. an https "
        "model hub with a token. URIs neither serves use a default store of their scheme "
        "where one needs no settings (https://, s3:// with the environment's credentials).",
    )
    models_uri: str = Field(description="Prefix of model sources: <models_uri>/<name>/<revision>/.")
    outputs_uri: str = Field(description="Prefix under which each run uploads its results.")
    compute: AnyComputeTarget
    postprocess_compute: AnyComputeTarget | None = Field(
        default=None,
        description="Where postprocess runs: None in the flow's own process, or a compute "
        "target (e.g. an ECS task on Fargate).",
    )
    # Saved inline in the stack's document (Prefect keeps nested blocks in lists that way),
    # which is why a step holds no secrets (tests/unit/test_registries.py checks).
    postprocess: list[AnyPostprocessStep] = Field(
        default_factory=lambda: [cast(PostprocessStep, Watermark())],
        description="Steps run in order on the job's raw video (the watermark by default).",
    )
    result_link_expiry_s: int = Field(
        default=86400,
        ge=0,
        le=604800,
        description="How long the presigned https link to a run's result works, for stores "
        "that sign links (S3 and S3-compatible; SigV4 allows at most 7 days); 0: no link, "
        "the result artifact shows only the URI.",
    )
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
    model_cache_max_bytes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Size budget of the NAS model cache: the janitor evicts the least recently used "
            "models not in use until the cache fits. Unset: models are never evicted."
        ),
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
    def _consistent(self) -> GpuflowStack:
        if not self.object_store.writable:
            raise ValueError(
                f"object_store: a {type(self.object_store).__name__} is read-only; results "
                "need a store they can be uploaded to"
            )
        for step, target in (("compute", self.compute), ("postprocess", self.postprocess_compute)):
            if target is not None:
                target.require_nas_at(self.nas_root, step)
        return self

    @property
    def model_cache(self) -> ModelCache:
        return ModelCache(root=self.nas_root / "models")

    @property
    def environments(self) -> EnvCatalog:
        return EnvCatalog(root=self.nas_root)

    @property
    def job_registry(self) -> JobRegistry:
        return JobRegistry(self.nas_root / "gpu-jobs")

    def store_for(self, uri: str) -> ObjectStore:
        """The store that serves ``uri``: the object store, the model store, or a default
        store of the URI's scheme that needs no settings."""
        return store_for(
            uri, [self.object_store, *([self.model_store] if self.model_store else [])]
        )

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

    def gpu_limits(self, gpu_type: str | None) -> list[str]:
        """The limits a job takes slots of: the pool, and its GPU type's pool if it names one."""
        return gpu_limit_names(self.gpu_limit, gpu_type)

    def hold_gpus(
        self,
        job: JobSpec,
        priority: Priority,
        run_id: str | None,
        holder: ConcurrencyLeaseHolder | None = None,
    ) -> AbstractAsyncContextManager[GpuHold]:
        """The GPU cap for ``job`` with this stack's limits, lease and admission queue."""
        admission = (
            Admission(self.admission_queue(), priority, self.admission_ttl_s)
            if self.fair_admission
            else None
        )
        return gpu_hold(
            self.gpu_limits(job.gpu_type),
            job.gpus,
            job_name=job.name,
            run_id=run_id,
            lease_s=self.gpu_lease_s,
            registry=self.job_registry,
            admission=admission,
            holder=holder,
        )
