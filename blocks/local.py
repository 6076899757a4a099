"""The local compute target: the GPU job as a subprocess of the flow.

Each job gets concrete device indices in ``CUDA_VISIBLE_DEVICES``: one ``flock``
per device under ``lock_dir`` makes sure no two concurrent jobs on this machine
share a device (the kernel drops the locks of a dead holder, so none leaks). With
no GPUs configured, ``CUDA_VISIBLE_DEVICES`` is empty and the job runs on the CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from gpuflow_progress import ExitCode
from pydantic import Field

from blocks.compute import ComputeTarget, JobResult, JobSpec, LineHandler
from gpuflow.errors import GpuCapacityError

_TERMINATE_GRACE_S = 5.0
_TAIL_LINES = 20
_LINE_LIMIT = 1024 * 1024  # longest line a job may print before we split it


class LocalSubprocess(ComputeTarget):
    """Runs jobs as local processes, each in its own process group."""

    _block_type_name = "gpuflow local subprocess"
    _block_type_slug = "gpuflow-local-subprocess"
    _description = "Run GPU jobs as local subprocesses with CUDA_VISIBLE_DEVICES per job."
    kind: ClassVar[str] = "local"

    devices: list[int] = Field(
        default_factory=list,
        description="GPU indices this machine offers to jobs; empty on a machine without GPUs.",
    )
    lock_dir: Path = Field(description="Directory for the per-device locks.")

    @contextlib.asynccontextmanager
    async def _claim_devices(self, count: int) -> AsyncIterator[tuple[str, ...]]:
        if not self.devices:
            yield ()
            return
        if count > len(self.devices):
            raise GpuCapacityError(
                f"job needs {count} GPUs but this machine offers {len(self.devices)} "
                f"(devices {self.devices})"
            )
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        held: dict[int, int] = {}
        try:
            while len(held) < count:
                for device in self.devices:
                    if device in held or len(held) == count:
                        continue
                    fd = os.open(self.lock_dir / f"gpu-{device}.lock", os.O_RDWR | os.O_CREAT)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        held[device] = fd
                    except BlockingIOError:
                        os.close(fd)
                if len(held) < count:
                    # The global limit admitted us, so devices free up shortly; never hold a
                    # partial set while waiting (two jobs could deadlock on each other).
                    for fd in held.values():
                        os.close(fd)
                    held.clear()
                    await asyncio.sleep(0.2)
            yield tuple(str(device) for device in sorted(held))
        finally:
            for fd in held.values():
                os.close(fd)

    async def run(self, job: JobSpec, on_line: LineHandler) -> JobResult:
        async with self._claim_devices(job.gpus) as devices:
            env = {**os.environ, **job.env, "CUDA_VISIBLE_DEVICES": ",".join(devices)}
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *job.argv,
                cwd=job.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                limit=_LINE_LIMIT,
                start_new_session=True,  # its own process group: stopping it stops its children
            )
            tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
            try:
                exit_code = await asyncio.wait_for(
                    self._pump(process, on_line, tail), timeout=job.timeout_s
                )
            except TimeoutError:
                await _stop(process)
                tail.append(f"gpuflow: job exceeded its timeout of {job.timeout_s:.0f}s")
                exit_code = int(ExitCode.RESOURCE_ERROR)
            except BaseException:
                await _stop(process)
                raise
            return JobResult(exit_code, time.monotonic() - started, devices, tuple(tail))

    @staticmethod
    async def _pump(
        process: asyncio.subprocess.Process,
        on_line: LineHandler,
        tail: collections.deque[str],
    ) -> int:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            tail.append(line)
            await on_line(line)
        return await process.wait()


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the job's process group, then SIGKILL it after a grace period."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=_TERMINATE_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
