"""gpuflow's block types, for Prefect's ``prefect.collections`` entry point.

Importing this module defines the block classes, so ``prefect block register -m
gpuflow.collection`` (and ``gpuflow bootstrap``) registers them all with a server and
the UI can create and edit them.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from blocks.local import LocalSubprocess
from blocks.object_store import LocalObjectStore
from blocks.stack import GpuflowStack
from blocks.watermark import Watermark

BLOCK_TYPES: tuple[type[Block], ...] = (GpuflowStack, LocalObjectStore, LocalSubprocess, Watermark)

__all__ = ["BLOCK_TYPES", "GpuflowStack", "LocalObjectStore", "LocalSubprocess", "Watermark"]
