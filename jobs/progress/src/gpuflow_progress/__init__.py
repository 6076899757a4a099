"""The line protocol between a gpuflow job and its orchestrator (standard library only).

A job prints ordinary log lines; a line starting with ``MARKER`` carries one JSON
event. The orchestrator calls :func:`parse_line` on every line it reads.

A job run as several processes (under ``torchrun``) reports from rank 0 alone: the
``report_*`` functions print nothing in the other ranks, and :func:`writes_outputs`
tells a job whether this process is the one that writes its outputs.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from dataclasses import dataclass
from typing import IO, Union

MARKER = "::gpuflow::"
PROTOCOL_VERSION = 1


class ExitCode(enum.IntEnum):
    """Exit codes of a job, from the General Pipeline convention."""

    SUCCESS = 0
    CONFIG_ERROR = 1
    INPUT_ERROR = 2
    LOGIC_ERROR = 3
    RESOURCE_ERROR = 4
    ENVIRONMENT_ERROR = 5


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    message: str = ""

    @property
    def percent(self) -> float:
        if self.total <= 0:
            return 0.0
        return max(0.0, min(100.0, 100.0 * self.done / self.total))


@dataclass(frozen=True)
class Output:
    name: str
    path: str


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str = ""


Event = Union[Progress, Output, Metric]


def encode(event: Event) -> str:
    """The protocol line (without newline) for ``event``."""
    payload: dict[str, object] = {"v": PROTOCOL_VERSION}
    if isinstance(event, Progress):
        payload.update(kind="progress", done=event.done, total=event.total, message=event.message)
    elif isinstance(event, Output):
        payload.update(kind="output", name=event.name, path=event.path)
    else:
        payload.update(kind="metric", name=event.name, value=event.value, unit=event.unit)
    return f"{MARKER} {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}"


def parse_line(line: str) -> Event | None:
    """The event a line carries, or None for a plain log line (malformed events included)."""
    stripped = line.strip()
    if not stripped.startswith(MARKER):
        return None
    try:
        payload = json.loads(stripped[len(MARKER) :])
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    try:
        kind = payload["kind"]
        if kind == "progress":
            return Progress(
                int(payload["done"]), int(payload["total"]), str(payload.get("message", ""))
            )
        if kind == "output":
            return Output(str(payload["name"]), str(payload["path"]))
        if kind == "metric":
            return Metric(
                str(payload["name"]), float(payload["value"]), str(payload.get("unit", ""))
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None


def process_rank() -> int:
    """This process's global rank: ``RANK`` as torchrun (or the training operator, one
    process per pod) sets it; 0 for a job run as one process."""
    text = os.environ.get("RANK", "0")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"RANK must be an integer, got {text!r}") from None


def writes_outputs() -> bool:
    """Whether this process writes the job's outputs and reports: rank 0 alone."""
    return process_rank() == 0


def _emit(event: Event, stream: IO[str] | None) -> None:
    if not writes_outputs():
        return
    out = stream if stream is not None else sys.stdout
    out.write(encode(event) + "\n")
    out.flush()


def report_progress(
    done: int, total: int, message: str = "", stream: IO[str] | None = None
) -> None:
    _emit(Progress(done, total, message), stream)


def report_output(name: str, path: str, stream: IO[str] | None = None) -> None:
    _emit(Output(name, path), stream)


def report_metric(name: str, value: float, unit: str = "", stream: IO[str] | None = None) -> None:
    _emit(Metric(name, value, unit), stream)


__all__ = [
    "MARKER",
    "PROTOCOL_VERSION",
    "Event",
    "ExitCode",
    "Metric",
    "Output",
    "Progress",
    "encode",
    "parse_line",
    "process_rank",
    "report_metric",
    "report_output",
    "report_progress",
    "writes_outputs",
]
