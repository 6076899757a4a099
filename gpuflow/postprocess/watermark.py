"""The watermark step: a text or logo overlay and an H.264 transcode with ffmpeg.

Text is rendered to a transparent PNG with Pillow and overlaid like a logo, so no
user text ever reaches an ffmpeg filter expression (which has its own escaping
rules and could otherwise be injected into).
"""

from __future__ import annotations

import enum
import subprocess
from pathlib import Path

import ffmpeg
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, model_validator

from gpuflow.core.errors import RequestError
from gpuflow.postprocess.base import PostprocessError, PostprocessStep


class Corner(enum.StrEnum):
    TOP_LEFT = "top-left"
    TOP_RIGHT = "top-right"
    BOTTOM_LEFT = "bottom-left"
    BOTTOM_RIGHT = "bottom-right"


_OVERLAY_POSITION = {
    Corner.TOP_LEFT: ("{m}", "{m}"),
    Corner.TOP_RIGHT: ("main_w-overlay_w-{m}", "{m}"),
    Corner.BOTTOM_LEFT: ("{m}", "main_h-overlay_h-{m}"),
    Corner.BOTTOM_RIGHT: ("main_w-overlay_w-{m}", "main_h-overlay_h-{m}"),
}


def ffmpeg_binary() -> str:
    return str(ffmpeg.FFMPEG_PATH)


def ffprobe_binary() -> str:
    return str(ffmpeg.FFPROBE_PATH)


class Watermark(PostprocessStep):
    """Overlay a text or a logo on every frame, then write an H.264 MP4."""

    _block_type_name = "gpuflow watermark"
    _block_type_slug = "gpuflow-watermark"
    _description = "Watermark (text or logo overlay) and H.264 transcode with ffmpeg."

    text: str | None = Field(default="gpuflow", max_length=200, description="Text to overlay.")
    logo: Path | None = Field(default=None, description="PNG logo to overlay instead of text.")
    corner: Corner = Field(default=Corner.BOTTOM_RIGHT, description="Where the mark sits.")
    margin_px: int = Field(default=8, ge=0, le=200)
    opacity: float = Field(default=0.8, gt=0.0, le=1.0)
    font_size_px: int = Field(default=18, ge=6, le=200)
    crf: int = Field(default=20, ge=0, le=51, description="x264 quality (lower is better).")

    @model_validator(mode="after")
    def _one_mark(self) -> Watermark:
        if (self.text is None) == (self.logo is None):
            raise ValueError("set exactly one of text and logo")
        return self

    def render_mark(self, destination: Path) -> Path:
        """The overlay image: the logo as given, or the text rendered onto transparency."""
        if self.logo is not None:
            if not self.logo.is_file():
                raise RequestError(f"watermark logo {self.logo} does not exist")
            return self.logo
        assert self.text is not None
        font = ImageFont.load_default(size=self.font_size_px)
        stroke = max(1, self.font_size_px // 12)
        # Measured as several lines: a text with line breaks is drawn line under line.
        measure = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        left, top, right, bottom = measure.multiline_textbbox(
            (0, 0), self.text, font=font, stroke_width=stroke
        )
        pad = max(2, self.font_size_px // 6)
        mark = Image.new(
            "RGBA", (int(right - left) + 2 * pad, int(bottom - top) + 2 * pad), (0, 0, 0, 0)
        )
        draw = ImageDraw.Draw(mark)
        # A dark outline keeps the mark readable on light and dark frames alike.
        draw.multiline_text(
            (pad - left, pad - top),
            self.text,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=stroke,
            stroke_fill=(0, 0, 0, 255),
        )
        mark.save(destination)
        return destination

    def command(self, source: Path, mark: Path, destination: Path) -> list[str]:
        x, y = (part.format(m=self.margin_px) for part in _OVERLAY_POSITION[self.corner])
        graph = (
            f"[1:v]format=rgba,colorchannelmixer=aa={self.opacity:.3f}[mark];"
            f"[0:v][mark]overlay=x={x}:y={y}:format=auto,format=yuv420p[out]"
        )
        return [
            ffmpeg_binary(),
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(source),
            "-i",
            str(mark),
            "-filter_complex",
            graph,
            "-map",
            "[out]",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            str(self.crf),
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            str(destination),
        ]

    def apply(self, source: Path, destination: Path) -> Path:
        """Write the watermarked ``destination``; it appears only when ffmpeg succeeded."""
        if not source.is_file():
            raise PostprocessError(f"raw video {source} does not exist")
        mark = self.render_mark(destination.with_name(f".{destination.stem}.mark.png"))
        partial = destination.with_name(f".{destination.name}.partial")
        try:
            completed = subprocess.run(
                self.command(source, mark, partial),
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
            if completed.returncode != 0:
                raise PostprocessError(
                    f"ffmpeg could not watermark {source} (exit {completed.returncode}): "
                    f"{completed.stderr.strip()[-2000:]}"
                )
            partial.replace(destination)
        except subprocess.TimeoutExpired as exc:
            raise PostprocessError(
                f"watermarking {source} took over {self.timeout_s:.0f}s"
            ) from exc
        finally:
            partial.unlink(missing_ok=True)
        return destination
