"""The camera move: the prompt and the seed choose a zoom/pan path through the image."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from i2v_job.model import StandInModel

# Prompt words that steer the camera, as a user of a real I2V model would phrase them.
_ZOOM_IN = ("zoom in", "push in", "dolly in", "closer", "approach")
_ZOOM_OUT = ("zoom out", "pull back", "dolly out", "reveal", "wide")
_PAN_LEFT = ("pan left", "to the left", "leftward")
_PAN_RIGHT = ("pan right", "to the right", "rightward")
_TILT_UP = ("tilt up", "upward", "rise", "sky")
_TILT_DOWN = ("tilt down", "downward", "descend", "ground")


PAN_MARGIN = 0.25


@dataclass(frozen=True)
class CameraPath:
    zoom_start: float
    zoom_end: float
    pan_x: float  # fraction of the spare width travelled, -1..1
    pan_y: float


def camera_path(prompt: str, seed: int) -> CameraPath:
    """A deterministic camera path: prompt keywords pick the direction, the seed the details."""
    text = prompt.lower()
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    zoom = 0.15 + 0.2 * float(rng.random())
    if any(word in text for word in _ZOOM_OUT):
        zoom_start, zoom_end = 1.0 + zoom, 1.0
    elif any(word in text for word in _ZOOM_IN):
        zoom_start, zoom_end = 1.0, 1.0 + zoom
    else:
        zoom_start, zoom_end = (1.0, 1.0 + zoom) if rng.random() < 0.5 else (1.0 + zoom, 1.0)
    pan_x = float(rng.uniform(-0.6, 0.6))
    pan_y = float(rng.uniform(-0.3, 0.3))
    if any(word in text for word in _PAN_LEFT):
        pan_x = -abs(pan_x) - 0.3
    elif any(word in text for word in _PAN_RIGHT):
        pan_x = abs(pan_x) + 0.3
    if any(word in text for word in _TILT_UP):
        pan_y = -abs(pan_y) - 0.3
    elif any(word in text for word in _TILT_DOWN):
        pan_y = abs(pan_y) + 0.3
    return CameraPath(zoom_start, zoom_end, max(-1.0, min(1.0, pan_x)), max(-1.0, min(1.0, pan_y)))


def _cover(image: Image.Image, width: int, height: int, margin: float) -> Image.Image:
    """The image scaled to cover ``width x height`` plus ``margin`` on each axis to pan into."""
    scale = max(width / image.width, height / image.height) * (1.0 + margin)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def render_frames(
    image: Image.Image,
    model: StandInModel,
    path: CameraPath,
    width: int,
    height: int,
    num_frames: int,
    seed: int,
) -> Iterator[np.ndarray]:
    """Yield ``num_frames`` RGB uint8 frames of shape (height, width, 3)."""
    canvas = _cover(image.convert("RGB"), width, height, margin=PAN_MARGIN)
    grain_rng = np.random.default_rng(seed)
    tile = model.grain
    for index in range(num_frames):
        t = index / (num_frames - 1) if num_frames > 1 else 0.0
        eased = t * t * (3.0 - 2.0 * t)  # smoothstep: the camera starts and stops gently
        zoom = path.zoom_start + (path.zoom_end - path.zoom_start) * eased
        # Zoom is >= 1 and the canvas is larger than the frame, so the crop always fits.
        crop_w = width / zoom
        crop_h = height / zoom
        spare_x = canvas.width - crop_w
        spare_y = canvas.height - crop_h
        left = spare_x * (0.5 + 0.5 * path.pan_x * (2.0 * eased - 1.0))
        top = spare_y * (0.5 + 0.5 * path.pan_y * (2.0 * eased - 1.0))
        frame = canvas.resize(
            (width, height),
            Image.Resampling.BILINEAR,
            box=(left, top, left + crop_w, top + crop_h),
        )
        pixels = np.asarray(frame, dtype=np.float32) / 255.0
        graded = pixels @ model.color_matrix.T
        offset = grain_rng.integers(0, tile.shape[0], size=2)
        grain = np.roll(tile, shift=(int(offset[0]), int(offset[1])), axis=(0, 1))
        reps = (height // tile.shape[0] + 1, width // tile.shape[1] + 1)
        graded += np.tile(grain, reps)[:height, :width, None]
        yield (np.clip(graded, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
