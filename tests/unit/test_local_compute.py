from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from gpuflow.compute.base import JobSpec
from gpuflow.compute.local import LocalSubprocess
from gpuflow.core.errors import GpuCapacityError
from gpuflow.core.locks import process_alive


def _spec(tmp_path: Path, code: str, gpus: int = 0, timeout_s: float = 60) -> JobSpec:
    return JobSpec(
        name="test",
        argv=[sys.executable, "-c", code],
        workdir=tmp_path,
        gpus=gpus,
        timeout_s=timeout_s,
    )


async def _collect(target: LocalSubprocess, job: JobSpec) -> tuple[int, list[str]]:
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    result = await target.run(job, on_line)
    return result.exit_code, lines


def test_output_lines_and_exit_code_come_back(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    code = (
        "import sys; print('hello'); print('x' * 200000); sys.stderr.write('oops\\n'); sys.exit(4)"
    )
    exit_code, lines = asyncio.run(_collect(target, _spec(tmp_path, code)))
    assert exit_code == 4
    assert lines[0] == "hello" and len(lines[1]) == 200000 and lines[2] == "oops"


def test_arguments_reach_the_job_verbatim(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    payload = 'it\'s "quoted"; $(rm -rf /) `x` \n--- yaml: [1]'
    job = JobSpec(
        name="argv",
        argv=[sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1]))", payload],
        workdir=tmp_path,
        gpus=0,
    )
    exit_code, lines = asyncio.run(_collect(target, job))
    assert exit_code == 0
    import json

    assert json.loads(lines[0]) == payload


def test_no_gpus_means_an_empty_cuda_visible_devices(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    code = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    assert asyncio.run(_collect(target, _spec(tmp_path, code)))[1] == ["''"]


def test_concurrent_jobs_never_share_a_device(tmp_path: Path) -> None:
    target = LocalSubprocess(devices=[0, 1, 2], lock_dir=tmp_path / "locks")
    code = (
        "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES']);"
        "print(time.time()); time.sleep(0.5); print(time.time())"
    )

    async def main() -> list[tuple[int, list[str]]]:
        return await asyncio.gather(
            *(_collect(target, _spec(tmp_path, code, gpus=2)) for _ in range(3))
        )

    runs = asyncio.run(main())
    spans = [(set(lines[0].split(",")), float(lines[1]), float(lines[2])) for _, lines in runs]
    assert all(len(devices) == 2 for devices, _, _ in spans)
    for i, (devices_a, start_a, end_a) in enumerate(spans):
        for devices_b, start_b, end_b in spans[i + 1 :]:
            overlapping = start_a < end_b and start_b < end_a
            assert not (overlapping and devices_a & devices_b), spans


def test_asking_for_more_devices_than_exist_is_refused(tmp_path: Path) -> None:
    target = LocalSubprocess(devices=[0], lock_dir=tmp_path / "locks")
    with pytest.raises(GpuCapacityError, match="needs 2 GPUs"):
        asyncio.run(_collect(target, _spec(tmp_path, "pass", gpus=2)))


def test_cancelling_stops_the_job_and_its_children(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    pids = tmp_path / "pids"
    code = (
        "import subprocess, sys, time, os;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}');"
        "print('started', flush=True); time.sleep(600)"
    )

    async def main() -> float:
        started = asyncio.Event()

        async def on_line(line: str) -> None:
            started.set()

        job = asyncio.create_task(target.run(_spec(tmp_path, code), on_line))
        await started.wait()
        began = time.monotonic()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        return time.monotonic() - began

    # The bound is the behaviour: cancelling does not wait out the 600 s job. 60 s leaves
    # the kill's grace period and a loaded machine far inside it.
    assert asyncio.run(main()) < 60
    parent, child = map(int, pids.read_text().split())
    deadline = time.monotonic() + 30
    while (process_alive(parent) or process_alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(parent) and not process_alive(child)


def test_a_job_over_its_timeout_is_killed_as_a_resource_error(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    started = time.monotonic()
    exit_code, _ = asyncio.run(
        _collect(target, _spec(tmp_path, "import time; time.sleep(60)", timeout_s=1))
    )
    assert exit_code == 4
    # The bound is the behaviour: killed at its 1 s timeout, not after the job's 60 s.
    assert time.monotonic() - started < 30


def test_progress_bars_that_redraw_with_carriage_returns_arrive_as_lines(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    # tqdm-style: 3 MiB of redraws and no newline at all, then a CRLF line and a last bare line.
    code = (
        "import sys\n"
        "for i in range(30000): sys.stdout.write(f'\\r{i:05d} ' + 'x' * 100)\n"
        "sys.stdout.write('\\r\\ndone\\r\\nlast'); sys.stdout.flush()"
    )
    exit_code, lines = asyncio.run(_collect(target, _spec(tmp_path, code)))
    assert exit_code == 0
    assert lines[0] == ""  # the first \r ends an empty line
    assert lines[1] == "00000 " + "x" * 100 and lines[30000] == "29999 " + "x" * 100
    assert lines[30001:] == ["done", "last"]


def test_an_endless_line_is_split_and_the_job_runs_on(tmp_path: Path) -> None:
    target = LocalSubprocess(lock_dir=tmp_path / "locks")
    code = "import sys; sys.stdout.write('y' * (3 * 1024 * 1024 + 5)); print(); print('after')"
    exit_code, lines = asyncio.run(_collect(target, _spec(tmp_path, code)))
    assert exit_code == 0
    assert [len(line) for line in lines] == [1024 * 1024] * 3 + [5, 5]
    assert lines[-1] == "after"


def test_jobs_get_an_allow_list_of_the_environment_never_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret_key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("HF_HOME", "/nas/hf")
    target = LocalSubprocess(lock_dir=tmp_path / "locks", inherit_env=["HF_HOME"])
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    job = _spec(tmp_path, code).model_copy(update={"env": {"GPUFLOW_RUN": "r1"}})
    exit_code, lines = asyncio.run(_collect(target, job))
    import json

    seen = json.loads(lines[0])
    assert exit_code == 0
    assert "PREFECT_API_KEY" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
    assert seen["LC_ALL"] == "C.UTF-8" and seen["HF_HOME"] == "/nas/hf"
    assert seen["GPUFLOW_RUN"] == "r1" and seen["PATH"] == os.environ["PATH"]
