"""Sizes the command line prints are read by people: `72.3 GiB free`, not `77631211520`."""

from __future__ import annotations

import pytest

from gpuflow.cli.support import human_bytes


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (78551113728, "73.2 GiB"),
        (5 * 1024**4, "5.0 TiB"),
        (3 * 1024**5, "3.0 PiB"),
    ],
)
def test_sizes_are_shown_in_binary_units(size: int, shown: str) -> None:
    assert human_bytes(size) == shown
