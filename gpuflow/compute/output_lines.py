"""A job's output bytes as lines, whatever the job prints.

``\\n``, ``\\r\\n`` and a bare ``\\r`` each end a line: progress bars (tqdm and the like)
redraw themselves with ``\\r`` and may never print a newline. A line longer than
``max_line_bytes`` is split into pieces of that size, so no output can make the reader
fail or hold an unbounded buffer.
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n|\r|\n")


class OutputLines:
    """Feed it chunks of output in order; it hands back the lines they complete."""

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self.pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self.pending + chunk
        lines: list[str] = []
        start = 0
        for match in _LINE_END.finditer(data):
            if match.group() == b"\r" and match.end() == len(data):
                break  # a \r at the end of a chunk may be the first half of \r\n
            lines.extend(self._pieces(data[start : match.start()]))
            start = match.end()
        rest = data[start:]
        # Hand out the whole pieces of an unfinished line but keep its last one (and a
        # trailing \r): a line end may follow, and must not make an empty line of its own.
        body = len(rest) - rest.endswith(b"\r")
        whole = (body - 1) // self.max_line_bytes * self.max_line_bytes if body else 0
        if whole > 0:
            lines.extend(self._pieces(rest[:whole]))
            rest = rest[whole:]
        self.pending = rest
        return lines

    def close(self) -> list[str]:
        """The last line, where the output did not end with a line end."""
        rest, self.pending = self.pending, b""
        if rest.endswith(b"\r"):
            rest = rest[:-1]
        return self._pieces(rest) if rest else []

    def _pieces(self, line: bytes) -> list[str]:
        if not line:
            return [""]
        size = self.max_line_bytes
        return [
            line[offset : offset + size].decode("utf-8", errors="replace")
            for offset in range(0, len(line), size)
        ]
