from __future__ import annotations

import io

import pytest
from gpuflow_progress import (
    MARKER,
    Metric,
    Output,
    Progress,
    encode,
    parse_line,
    report_output,
    report_progress,
)


@pytest.mark.parametrize(
    "event",
    [
        Progress(3, 16, "frame 3/16"),
        Progress(0, 0, ""),
        Output("video", "outputs/raw.mp4"),
        Metric("frames_per_s", 12.5, "frames/s"),
        Progress(1, 2, 'quotes " and\nnewlines and ::gpuflow:: inside'),
    ],
)
def test_every_event_survives_a_round_trip(event: Progress | Output | Metric) -> None:
    line = encode(event)
    assert line.startswith(MARKER)
    assert "\n" not in line
    assert parse_line(line + "\n") == event


@pytest.mark.parametrize(
    "line",
    [
        "plain log line",
        f"{MARKER} not json",
        f"{MARKER} [1, 2]",
        f'{MARKER} {{"kind": "progress", "done": "x", "total": 3}}',
        f'{MARKER} {{"kind": "progress", "total": 3}}',
        f'{MARKER} {{"kind": "unknown"}}',
        f"prefix {MARKER} {{}}",
    ],
)
def test_anything_else_is_a_plain_log_line(line: str) -> None:
    assert parse_line(line) is None


def test_percent_is_clamped_and_safe_for_empty_totals() -> None:
    assert Progress(5, 10).percent == 50.0
    assert Progress(12, 10).percent == 100.0
    assert Progress(1, 0).percent == 0.0


def test_reporters_write_one_flushed_line_each() -> None:
    stream = io.StringIO()
    report_progress(1, 4, "a", stream=stream)
    report_output("video", "out.mp4", stream=stream)
    lines = stream.getvalue().splitlines()
    assert [parse_line(line) for line in lines] == [Progress(1, 4, "a"), Output("video", "out.mp4")]
