"""Reading videos back with ffprobe/ffmpeg from the ffmpeg wheel, for assertions."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpuflow.postprocess.watermark import ffmpeg_binary, ffprobe_binary


@dataclass(frozen=True)
class VideoFacts:
    width: int
    height: int
    frames: int
    duration_s: float
    codec: str


def probe(path: Path) -> VideoFacts:
    completed = subprocess.run(
        [
            ffprobe_binary(), "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=width,height,nb_read_frames,duration,codec_name",
            "-of", "json", str(path),
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream = json.loads(completed.stdout)["streams"][0]
    return VideoFacts(
        width=int(stream["width"]),
        height=int(stream["height"]),
        frames=int(stream["nb_read_frames"]),
        duration_s=float(stream["duration"]),
        codec=stream["codec_name"],
    )


def frame(path: Path, index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index`` as an RGB array of shape (height, width, 3)."""
    completed = subprocess.run(
        [
            ffmpeg_binary(), "-v", "error", "-i", str(path),
            "-vf", f"select=eq(n\\,{index})", "-frames:v", "1",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ],
        capture_output=True, check=True,
    )  # fmt: skip
    return np.frombuffer(completed.stdout, dtype=np.uint8).reshape(height, width, 3)
