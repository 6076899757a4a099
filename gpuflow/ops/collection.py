"""gpuflow's block types, for Prefect's ``prefect.collections`` entry point.

Derived from the registries (object stores, compute backends, postprocess steps), so
``prefect block register -m gpuflow.ops.collection`` (and ``gpuflow bootstrap``) registers
every type a stack can hold and the UI can create and edit them.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from gpuflow.compute.backends import COMPUTE_BACKENDS
from gpuflow.envs.fabric import EnvironmentFabric
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.postprocess.steps import POSTPROCESS_STEPS
from gpuflow.storage.model_cache import ModelCache
from gpuflow.storage.stores import OBJECT_STORES

BLOCK_TYPES: tuple[type[Block], ...] = (
    GpuflowStack,
    *OBJECT_STORES,
    ModelCache,
    EnvironmentFabric,
    *COMPUTE_BACKENDS,
    *POSTPROCESS_STEPS,
)

__all__ = ["BLOCK_TYPES"]
