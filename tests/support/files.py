"""Small helpers for the storage tests."""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
from pathlib import Path


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def xz_container_crc64(data: bytes) -> int:
    """CRC-64/XZ (ECMA-182) of non-empty ``data`` as liblzma computes it: the check an .xz
    stream stores after its one block, before the index whose size the footer gives."""
    blob = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=0)
    index_size = (struct.unpack("<I", blob[-8:-4])[0] + 1) * 4
    return int.from_bytes(blob[-12 - index_size - 8 : -12 - index_size], "little")
