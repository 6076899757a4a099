from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from gpuflow.compute.base import JobSpec
from gpuflow.pipeline.progress import JobLineHandler, ProgressReporter


def _handler(tmp_path: Path, logger: logging.Logger, **limits: int) -> JobLineHandler:
    job = JobSpec(name="i2v-run1", argv=[sys.executable], workdir=tmp_path, gpus=0)
    return JobLineHandler(job, ProgressReporter(job.name, logger), logger, **limits)


def test_a_flood_of_lines_is_sampled_for_the_run_and_kept_whole_in_the_workspace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.job-log")
    caplog.set_level(logging.INFO, logger="test.job-log")
    lines = _handler(tmp_path, logger, burst_lines=100)

    async def flood() -> None:
        for number in range(20_000):
            await lines(f"step {number}")
        lines.close()

    asyncio.run(flood())

    sent = [r for r in caplog.records if r.levelno == logging.INFO]
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The burst, plus what the rate refills while the loop runs (well under a minute).
    assert 100 <= len(sent) < 100 + 20 * 60
    assert sum(int(note.split()[0]) for note in notes) == 20_000 - len(sent)
    assert all(str(lines.log_path) in note for note in notes)
    kept = lines.log_path.read_text().splitlines()
    assert kept == [f"step {number}" for number in range(20_000)]


def test_the_workspace_log_stops_at_its_cap_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = _handler(tmp_path, logging.getLogger("test.job-log-cap"), max_log_bytes=1000)

    async def write() -> None:
        for _ in range(500):
            await lines("x" * 99)
        lines.close()

    asyncio.run(write())
    kept = lines.log_path.read_text().splitlines()
    assert len(kept) == 10 and kept[:9] == ["x" * 99] * 9
    assert "limit of 1000 bytes" in kept[-1]
