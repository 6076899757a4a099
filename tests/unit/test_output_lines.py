from __future__ import annotations

import pytest

from gpuflow.compute.output_lines import OutputLines


def _split(chunks: list[bytes], limit: int = 8) -> list[str]:
    lines = OutputLines(limit)
    out = [line for chunk in chunks for line in lines.feed(chunk)]
    return out + lines.close()


def test_each_line_end_ends_a_line() -> None:
    assert _split([b"a\nb\r\nc\rd"]) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_crlf_cut_between_chunks_is_one_line_end(cut: int) -> None:
    data = b"ab\r\ncd\r\r\n"
    assert _split([data[:cut], data[cut:]]) == ["ab", "cd", ""]


def test_long_lines_are_split_at_the_limit_whatever_the_chunks() -> None:
    data = b"0123456789abcdefXYZ\n"
    expected = ["01234567", "89abcdef", "XYZ"]
    assert _split([data]) == expected
    assert _split([data[i : i + 1] for i in range(len(data))]) == expected


def test_a_line_of_exactly_the_limit_before_a_crlf_stays_whole() -> None:
    assert _split([b"01234567\r", b"\nnext"]) == ["01234567", "next"]


def test_bytes_that_are_not_utf8_are_replaced() -> None:
    assert _split([b"caf\xe9\n"]) == ["caf\ufffd"]


def test_a_line_of_exactly_the_limit_makes_no_empty_line_after_it() -> None:
    assert _split([b"01234567", b"\n", b"89abcdef01234567\nx"]) == [
        "01234567",
        "89abcdef",
        "01234567",
        "x",
    ]
