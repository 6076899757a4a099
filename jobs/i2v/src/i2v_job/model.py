"""Loading the stand-in model artifact.

A model directory holds ``config.json`` (``{"architecture": "gpuflow-i2v-standin",
"format_version": 1, ...}``) and ``weights.npz`` with ``color_matrix`` (3x3 float32,
the colour grade the model applies) and ``grain`` (a square float32 texture added
as film grain). Real I2V weights are tens of GB; this artifact is small, but the job
loads and uses it exactly as a real job would use its checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCHITECTURE = "gpuflow-i2v-standin"
FORMAT_VERSION = 1


class ModelError(Exception):
    """The model directory is missing, incomplete or not this job's architecture."""


@dataclass(frozen=True)
class StandInModel:
    name: str
    revision: str
    color_matrix: np.ndarray
    grain: np.ndarray


def load_model(model_dir: Path) -> StandInModel:
    config_path = model_dir / "config.json"
    weights_path = model_dir / "weights.npz"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"model directory {model_dir} has no config.json") from exc
    except ValueError as exc:
        raise ModelError(f"{config_path} is not valid JSON: {exc}") from exc
    if config.get("architecture") != ARCHITECTURE:
        raise ModelError(
            f"{config_path}: architecture {config.get('architecture')!r} is not {ARCHITECTURE!r}"
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{config_path}: format_version {config.get('format_version')!r} "
            f"is not supported (expected {FORMAT_VERSION})"
        )
    try:
        with np.load(weights_path) as weights:
            color_matrix = np.asarray(weights["color_matrix"], dtype=np.float32)
            grain = np.asarray(weights["grain"], dtype=np.float32)
    except FileNotFoundError as exc:
        raise ModelError(f"model directory {model_dir} has no weights.npz") from exc
    except (KeyError, ValueError, OSError) as exc:
        raise ModelError(f"{weights_path} is not a readable weights file: {exc}") from exc
    if color_matrix.shape != (3, 3):
        raise ModelError(f"{weights_path}: color_matrix has shape {color_matrix.shape}, not (3, 3)")
    if grain.ndim != 2 or grain.shape[0] != grain.shape[1]:
        raise ModelError(f"{weights_path}: grain must be a square 2-D texture, not {grain.shape}")
    return StandInModel(
        name=str(config.get("name", model_dir.parent.name)),
        revision=str(config.get("revision", model_dir.name)),
        color_matrix=color_matrix,
        grain=grain,
    )
