"""The job guard: a local job dies with its flow process, whatever kills that process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from gpuflow.compute.base import JobSpec
from gpuflow.compute.local import LocalSubprocess
from tests.support.processes import running


def test_kill_9_of_the_flow_process_kills_the_job_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    job_code = (
        "import os, subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}');"
        "time.sleep(600)"
    )
    flow_code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from gpuflow.compute.base import JobSpec\n"
        "from gpuflow.compute.local import LocalSubprocess\n"
        f"job = JobSpec(name='j', argv=[sys.executable, '-c', {job_code!r}], "
        f"workdir=Path({str(tmp_path)!r}), gpus=1)\n"
        f"target = LocalSubprocess(devices=[0], lock_dir=Path({str(tmp_path / 'locks')!r}))\n"
        "async def on_line(line): pass\n"
        "asyncio.run(target.run(job, on_line))\n"
    )
    flow = subprocess.Popen([sys.executable, "-c", flow_code])
    try:
        deadline = time.monotonic() + 30
        while not (pids.exists() and pids.read_text()):
            assert flow.poll() is None, "the flow process exited early"
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        job_pid, child_pid = map(int, pids.read_text().split())
        assert running(job_pid) and running(child_pid)
        flow.kill()  # SIGKILL: no cleanup code of the flow runs
        flow.wait()
        # The job sleeps far longer: dying at all is the behaviour, and 30 s means "never".
        killed_at = time.monotonic()
        while (running(job_pid) or running(child_pid)) and time.monotonic() < killed_at + 30:
            time.sleep(0.02)
        assert not running(job_pid), "the job outlived its flow process"
        assert not running(child_pid), "the job's child outlived the flow process"
        # The device is free again for the next job (the kernel dropped the flow's flock).
        target = LocalSubprocess(devices=[0], lock_dir=tmp_path / "locks")
        spec = JobSpec(name="next", argv=[sys.executable, "-c", "pass"], workdir=tmp_path, gpus=1)

        async def ignore(line: str) -> None:
            return None

        result = asyncio.run(asyncio.wait_for(target.run(spec, ignore), 60))
        assert result.exit_code == 0 and result.devices == ("0",)
    finally:
        if flow.poll() is None:
            flow.kill()


def test_a_job_killed_by_a_signal_reports_that_signal(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    spec = JobSpec(
        name="sig",
        argv=[sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        workdir=tmp_path,
        gpus=0,
    )

    async def ignore(line: str) -> None:
        return None

    assert asyncio.run(target.run(spec, ignore)).exit_code == -signal.SIGKILL


def test_a_missing_program_is_an_environment_error_naming_it(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    missing = str(tmp_path / "no-such-job")
    spec = JobSpec(name="missing", argv=[missing, "--flag"], workdir=tmp_path, gpus=0)
    lines: list[str] = []

    async def collect(line: str) -> None:
        lines.append(line)

    result = asyncio.run(target.run(spec, collect))
    assert result.exit_code == 5
    assert any(missing in line for line in lines), lines
