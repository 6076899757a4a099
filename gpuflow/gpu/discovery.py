"""GPU discovery through NVML (nvidia-ml-py), for the local compute target."""

from __future__ import annotations

import logging
import os

import pynvml

logger = logging.getLogger(__name__)


def discover_gpu_indices() -> list[int] | None:
    """Indices of the GPUs NVML sees, narrowed by ``CUDA_VISIBLE_DEVICES`` when it is set
    to indices; ``None`` when NVML is absent (no driver), so the caller falls back to
    its configuration."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        logger.debug("NVML is not available (%s); no GPUs discovered", exc)
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    indices = list(range(count))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(part.strip().isdigit() for part in visible.split(",") if part):
        allowed = {int(part) for part in visible.split(",") if part.strip()}
        indices = [index for index in indices if index in allowed]
    return indices
