from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from gpuflow.core.errors import RequestError
from gpuflow.pipeline.input_image import MAX_FILE_BYTES, check_input_image

URI = "s3://inputs/cat.png"


def _png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width``x``height``: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )  # fmt: skip
    return path


def test_a_good_image_passes_with_its_facts(tmp_path: Path) -> None:
    Image.new("RGB", (320, 192)).save(tmp_path / "cat.png")
    facts = check_input_image(tmp_path / "cat.png", URI)
    assert (facts.format, facts.width, facts.height) == ("PNG", 320, 192)


@pytest.mark.parametrize(
    ("width", "height", "named"),
    [(100_000, 100_000, "decompression bomb"), (9000, 100, "9000x100"), (7000, 7000, "7000x7000")],
)
def test_oversized_images_are_refused_from_their_header(
    tmp_path: Path, width: int, height: int, named: str
) -> None:
    bomb = _png_header_claiming(tmp_path / "bomb.png", width, height)
    assert bomb.stat().st_size < 200
    with pytest.raises(RequestError, match=named) as refused:
        check_input_image(bomb, URI)
    assert URI in str(refused.value)


def test_other_formats_and_non_images_are_refused(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "cat.gif")
    with pytest.raises(RequestError, match="is GIF; use one of JPEG, PNG, WEBP"):
        check_input_image(tmp_path / "cat.gif", URI)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(RequestError, match="not a readable image"):
        check_input_image(tmp_path / "notes.png", URI)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(RequestError, match=f"{MAX_FILE_BYTES + 1} bytes"):
        check_input_image(big, URI)
