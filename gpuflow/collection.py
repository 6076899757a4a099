"""gpuflow's block types, for Prefect's ``prefect.collections`` entry point.

Importing this module defines the block classes, so ``prefect block register -m
gpuflow.collection`` (and ``gpuflow bootstrap``) registers them all with a server and
the UI can create and edit them.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from blocks.ecs import EcsTask
from blocks.environment import EnvironmentFabric
from blocks.http_source import HttpSource
from blocks.kubernetes import KubernetesPyTorchJob
from blocks.local import LocalSubprocess
from blocks.model_cache import ModelCache
from blocks.object_store import LocalObjectStore
from blocks.s3 import S3ObjectStore
from blocks.stack import GpuflowStack
from blocks.watermark import Watermark

BLOCK_TYPES: tuple[type[Block], ...] = (
    GpuflowStack,
    LocalObjectStore,
    S3ObjectStore,
    HttpSource,
    ModelCache,
    EnvironmentFabric,
    LocalSubprocess,
    KubernetesPyTorchJob,
    EcsTask,
    Watermark,
)

__all__ = ["BLOCK_TYPES"]
