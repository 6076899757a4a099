"""A postprocess step: a block that turns one video file into another, on the CPU.

A stack lists its steps (``GpuflowStack.postprocess``); they run in order, each on the
previous one's output, in the flow's process or as one job on a compute target
(``gpuflow.postprocess.job``). ``gpuflow.postprocess.steps`` registers the step types.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from gpuflow.core.errors import GpuflowError


class PostprocessError(GpuflowError):
    """A step failed on a good input (ffmpeg crashed, timed out): worth another try."""

    retryable = True


class PostprocessStep(Block, ABC):
    """One step of postprocessing; ``apply`` must publish ``destination`` atomically."""

    _block_schema_capabilities: ClassVar[list[str]] = ["postprocess-step"]

    timeout_s: float = Field(default=600.0, gt=0, description="Longest the step may take.")

    @abstractmethod
    def apply(self, source: Path, destination: Path) -> Path:
        """Write ``destination`` from ``source``; it appears only once complete."""
