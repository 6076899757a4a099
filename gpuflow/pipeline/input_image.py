"""The input image, checked when it is staged: a bad image is the request's fault and is
refused before the model is loaded or any GPU is held, not found by the job later.

Only the header is read (format and dimensions), never the pixels, so a "decompression
bomb" — a small file that claims billions of pixels — costs nothing to refuse.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from gpuflow.core.errors import RequestError

FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_SIDE_PX = 8192
MAX_PIXELS = 40_000_000  # 40 megapixels: far above any video resolution a job renders


@dataclass(frozen=True)
class InputImage:
    format: str
    width: int
    height: int


def check_input_image(path: Path, uri: str) -> InputImage:
    """The staged image's format and size, or a ``RequestError`` naming ``uri`` and why."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise RequestError(
            f"input image {uri} is {size} bytes; the limit is {MAX_FILE_BYTES} bytes"
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) about huge images itself: the limits below decide.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                found = InputImage(str(image.format), image.width, image.height)
    except Image.DecompressionBombError:
        raise RequestError(
            f"input image {uri} claims more than {MAX_PIXELS} pixels (a decompression bomb?)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(f"input image {uri} is not a readable image: {exc}") from None
    if found.format not in FORMATS:
        raise RequestError(
            f"input image {uri} is {found.format}; use one of {', '.join(sorted(FORMATS))}"
        )
    if max(found.width, found.height) > MAX_SIDE_PX or found.width * found.height > MAX_PIXELS:
        raise RequestError(
            f"input image {uri} is {found.width}x{found.height}; the limits are "
            f"{MAX_SIDE_PX} px a side and {MAX_PIXELS} pixels"
        )
    if min(found.width, found.height) < 1:
        raise RequestError(f"input image {uri} is {found.width}x{found.height}: empty")
    return found
