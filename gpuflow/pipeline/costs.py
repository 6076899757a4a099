"""What a run cost: wall time per step, GPU-seconds and bytes moved (its table artifact)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class RunCosts:
    steps: dict[str, float] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - started, 3)

    def table(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {"item": name, "value": seconds, "unit": "s"} for name, seconds in self.steps.items()
        ]
        rows += [
            {"item": "total", "value": round(sum(self.steps.values()), 3), "unit": "s"},
            {"item": "gpu", "value": round(self.gpu_seconds, 3), "unit": "GPU-s"},
            {"item": "downloaded", "value": self.bytes_in, "unit": "bytes"},
            {"item": "uploaded", "value": self.bytes_out, "unit": "bytes"},
        ]
        return rows
