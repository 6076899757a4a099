from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from gpuflow.core.errors import RequestError
from gpuflow.postprocess.base import PostprocessError
from gpuflow.postprocess.watermark import Corner, Watermark


def test_exactly_one_of_text_and_logo(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Watermark(text="a", logo=tmp_path / "logo.png")
    with pytest.raises(ValidationError, match="exactly one"):
        Watermark(text=None)


def test_text_never_reaches_the_ffmpeg_command(tmp_path: Path) -> None:
    payload = "x';[0:v]drawtext=text=pwned:fontfile=/etc/passwd[out]"
    mark = Watermark(text=payload, corner=Corner.TOP_LEFT)
    command = mark.command(tmp_path / "in.mp4", tmp_path / "mark.png", tmp_path / "out.mp4")
    assert not any(payload in part or "pwned" in part for part in command)
    rendered = mark.render_mark(tmp_path / "mark.png")
    with Image.open(rendered) as image:
        assert image.mode == "RGBA" and image.width > image.height > 0


def test_a_missing_logo_or_raw_video_is_named(tmp_path: Path) -> None:
    with pytest.raises(PostprocessError, match=r"raw\.mp4"):
        Watermark().apply(tmp_path / "raw.mp4", tmp_path / "out.mp4")
    (tmp_path / "raw.mp4").write_bytes(b"")
    # A missing logo is the request's fault: RequestError, which no retry can fix.
    with pytest.raises(RequestError, match=r"logo\.png") as missing_logo:
        Watermark(text=None, logo=tmp_path / "logo.png").apply(
            tmp_path / "raw.mp4", tmp_path / "o.mp4"
        )
    assert not missing_logo.value.retryable


def test_ffmpeg_failure_is_reported_and_leaves_no_output(tmp_path: Path) -> None:
    raw = tmp_path / "raw.mp4"
    raw.write_bytes(b"not a video")
    with pytest.raises(PostprocessError, match=r"raw\.mp4"):
        Watermark().apply(raw, tmp_path / "video.mp4")
    assert not (tmp_path / "video.mp4").exists()
    assert not list(tmp_path.glob(".video.mp4.partial"))


def _opaque_rows(path: Path) -> list[int]:
    with Image.open(path) as image:
        alpha = image.getchannel("A")
        return [
            y
            for y in range(image.height)
            if any(alpha.getpixel((x, y)) for x in range(image.width))
        ]


def test_every_line_of_a_multi_line_text_is_drawn(tmp_path: Path) -> None:
    one = Watermark(text="gpuflow", font_size_px=24).render_mark(tmp_path / "one.png")
    three = Watermark(text="gpuflow\nstudio\nWIDE LAST LINE", font_size_px=24).render_mark(
        tmp_path / "three.png"
    )
    with Image.open(one) as single, Image.open(three) as multiple:
        assert multiple.height > 2.5 * single.height
        assert multiple.width > single.width  # the widest line decides the width
    rows = _opaque_rows(three)
    # Ink in the bottom quarter: the last line is there, not cut off.
    with Image.open(three) as multiple:
        assert max(rows) > multiple.height * 3 // 4
