"""Loading a Wan I2V model directory in the diffusers layout, from local files only.

The directory is what ``WanImageToVideoPipeline.save_pretrained`` writes (or a Wan
checkpoint from a hub, copied into the object store): ``model_index.json`` naming
``WanImageToVideoPipeline`` and one folder per component. An optional
``gpuflow-sampling.json`` holds the sampling settings the request does not carry
(``num_inference_steps``, ``guidance_scale``); without it the job uses Wan's defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import WanImageToVideoPipeline

PIPELINE_CLASS = "WanImageToVideoPipeline"
SAMPLING_FILE = "gpuflow-sampling.json"
# Wan 2.1 I2V's published defaults (the diffusers model card's example).
DEFAULT_STEPS = 40
DEFAULT_GUIDANCE = 5.0


class ModelError(Exception):
    """The model directory is missing, incomplete or not a Wan I2V pipeline."""


@dataclass(frozen=True)
class Sampling:
    num_inference_steps: int
    guidance_scale: float


def check_architecture(model_dir: Path) -> None:
    """Refuse a directory that is not a diffusers Wan I2V pipeline before loading torch
    weights: a wrong model is a config error, not a crash deep inside diffusers."""
    index_path = model_dir / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(
            f"model directory {model_dir} has no model_index.json: not a diffusers pipeline"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{index_path} is not readable JSON: {exc}") from exc
    found = index.get("_class_name") if isinstance(index, dict) else None
    if found != PIPELINE_CLASS:
        raise ModelError(f"{index_path}: pipeline {found!r} is not {PIPELINE_CLASS!r}")


def read_sampling(model_dir: Path) -> Sampling:
    path = model_dir / SAMPLING_FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        return Sampling(DEFAULT_STEPS, DEFAULT_GUIDANCE)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    steps = recorded.get("num_inference_steps", DEFAULT_STEPS)
    guidance = recorded.get("guidance_scale", DEFAULT_GUIDANCE)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ModelError(f"{path}: num_inference_steps must be a positive integer, got {steps!r}")
    if not isinstance(guidance, int | float) or isinstance(guidance, bool) or guidance < 0:
        raise ModelError(f"{path}: guidance_scale must be a number >= 0, got {guidance!r}")
    return Sampling(steps, float(guidance))


def load_pipeline(
    model_dir: Path, device: torch.device, dtype: torch.dtype
) -> WanImageToVideoPipeline:
    """The pipeline on ``device``; never reaches a hub (``local_files_only``)."""
    import diffusers
    import torch
    import transformers
    from diffusers import WanImageToVideoPipeline

    # Loading bars are noise in a job's log; progress goes through gpuflow_progress.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    check_architecture(model_dir)
    try:
        pipeline = WanImageToVideoPipeline.from_pretrained(
            model_dir, dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # diffusers' errors for a missing component folder, a config of another model, or
        # weights that do not fit the config.
        raise ModelError(f"cannot load {model_dir} as a Wan I2V pipeline: {exc}") from exc
    _refuse_missing_weights(pipeline, model_dir)
    if dtype != torch.float32:
        # Wan's VAE is published for float32 whatever the transformer runs in (bf16 on CUDA).
        pipeline.vae.to(dtype=torch.float32)
    return pipeline.to(device)


def _refuse_missing_weights(pipeline: WanImageToVideoPipeline, model_dir: Path) -> None:
    """A config that asks for more than the weights hold loads with the missing parameters
    left on the meta device (diffusers only warns): refuse it as the wrong model."""
    import torch

    for name, component in pipeline.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        missing = [key for key, tensor in component.state_dict().items() if tensor.is_meta]
        if missing:
            raise ModelError(
                f"cannot load {model_dir} as a Wan I2V pipeline: {name}'s weights do not match "
                f"its config ({len(missing)} tensors missing, e.g. {missing[0]})"
            )
