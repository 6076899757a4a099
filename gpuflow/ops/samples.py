"""Sample inputs for the demo: a procedural landscape image and two model artifacts.

The stand-in model is the format ``jobs/i2v`` loads (``config.json`` + ``weights.npz``
with a 3x3 ``color_matrix`` and a square ``grain`` texture). The tiny Wan model is a
randomly initialised ``WanImageToVideoPipeline`` in the diffusers layout, which
``jobs/wan-i2v`` loads like a real checkpoint; it is built by that job's own
environment (torch, diffusers), never downloaded.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MODEL_ARCHITECTURE = "gpuflow-i2v-standin"


def landscape_png(width: int = 640, height: int = 384) -> bytes:
    """A small, detailed scene (sky gradient, sun, hills, trees) that shows camera motion."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    sky = np.stack([0.35 + 0.5 * y, 0.55 + 0.35 * y, 0.95 - 0.25 * y], axis=-1) * np.ones(
        (1, width, 1), dtype=np.float32
    )
    image = Image.fromarray((sky * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.68, height * 0.12, width * 0.8, height * 0.32), fill=(255, 214, 102))
    rng = np.random.default_rng(7)
    for layer, colour in enumerate([(70, 120, 80), (50, 100, 60), (30, 80, 45)]):
        base = height * (0.55 + 0.12 * layer)
        xs = np.linspace(0, width, 24)
        ys = base + rng.normal(0, height * 0.04, size=xs.size)
        draw.polygon(
            [(0, height), *zip(xs.tolist(), ys.tolist(), strict=True), (width, height)], fill=colour
        )
    for x in rng.uniform(0, width, size=18):
        ground = height * 0.82 + rng.uniform(-10, 10)
        draw.polygon([(x, ground - 40), (x - 12, ground), (x + 12, ground)], fill=(20, 60, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_model(directory: Path, name: str, revision: str) -> None:
    """Write the stand-in model artifact (a warm colour grade and a film-grain texture)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": MODEL_ARCHITECTURE,
        "format_version": 1,
        "name": name,
        "revision": revision,
    }
    staging = directory / ".config.json.tmp"
    staging.write_text(json.dumps(config, indent=2))
    staging.replace(directory / "config.json")
    color_matrix = np.array(
        [[1.06, 0.02, 0.0], [0.0, 1.0, 0.0], [0.0, 0.02, 0.92]], dtype=np.float32
    )
    grain = np.random.default_rng(2026).normal(0.0, 0.015, size=(64, 64)).astype(np.float32)
    with (directory / ".weights.tmp.npz").open("wb") as handle:
        np.savez(handle, color_matrix=color_matrix, grain=grain)
    (directory / ".weights.tmp.npz").replace(directory / "weights.npz")


def write_image(path: Path) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging.write_bytes(landscape_png())
    staging.replace(path)


def write_wan_tiny_model(job_python: Path, directory: Path) -> None:
    """Build the tiny Wan I2V pipeline into ``directory`` with the wan-i2v job's Python
    (``python -m wan_i2v_job.tiny_model``, which publishes it by a rename)."""
    completed = subprocess.run(
        [str(job_python), "-m", "wan_i2v_job.tiny_model", str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"building the tiny Wan model with {job_python} failed "
            f"(exit {completed.returncode}): {completed.stderr[-2000:]}"
        )
