"""The local compute target: the GPU job as a subprocess of the flow.

Each job gets concrete device indices in ``CUDA_VISIBLE_DEVICES``: one ``flock``
per device under ``lock_dir`` makes sure no two concurrent jobs on this machine
share a device (the kernel drops the locks of a dead holder, so none leaks). With
no GPUs configured or found, ``CUDA_VISIBLE_DEVICES`` is empty and the job runs on the CPU.

The job runs under ``gpuflow.compute.job_guard``, which kills its process group when the
flow process dies (even by ``kill -9``), so no job outlives the run that accounts
for its GPUs. A job of an env starts behind the interpreter check
(``gpuflow.compute.interpreter_check``): in a container of the docker work pool, an env
built on another host's Python fails as a config error that names it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from gpuflow_progress import ExitCode
from pydantic import Field

from gpuflow.compute.base import ComputeTarget, JobResult, JobSpec, LineHandler
from gpuflow.compute.interpreter_check import checked_command
from gpuflow.compute.output_lines import OutputLines
from gpuflow.core.errors import GpuCapacityError
from gpuflow.gpu.discovery import discover_gpu_indices

_TERMINATE_GRACE_S = 5.0
_TAIL_LINES = 20
_LINE_LIMIT = 1024 * 1024  # longest line a job may print before we split it
_READ_CHUNK = 64 * 1024
# What a job gets of the flow process's environment: enough to run programs, find the
# GPUs' libraries and speak the locale; never its credentials (PREFECT_API_KEY, AWS_*).
JOB_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
     "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR"}
)  # fmt: skip
JOB_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_")


class LocalSubprocess(ComputeTarget):
    """Runs jobs as local processes, each in its own process group."""

    _block_type_name = "gpuflow local subprocess"
    _block_type_slug = "gpuflow-local-subprocess"
    _description = "Run GPU jobs as local subprocesses with CUDA_VISIBLE_DEVICES per job."
    gpuflow_python: ClassVar[str] = sys.executable  # jobs run on this host, beside the flow

    devices: list[int] | None = Field(
        default=None,
        description=(
            "GPU indices this machine offers to jobs. Unset: discovered through NVML "
            "(none where NVML is absent, and jobs run on the CPU)."
        ),
    )
    lock_dir: Path = Field(description="Directory for the per-device locks.")
    inherit_env: list[str] = Field(
        default_factory=list,
        description=(
            "More variables of the flow process's environment that jobs get, by name, beside "
            "PATH, HOME, the locale and the CUDA/NVIDIA/NCCL settings (jobs never get the "
            "rest, such as PREFECT_API_KEY or AWS credentials)."
        ),
    )

    def job_environment(self, job: JobSpec, devices: tuple[str, ...]) -> dict[str, str]:
        """The allowed part of this process's environment, then the job's own variables."""
        allowed = set(self.inherit_env)
        inherited = {
            name: value
            for name, value in os.environ.items()
            if name in JOB_ENV_NAMES or name in allowed or name.startswith(JOB_ENV_PREFIXES)
        }
        # Unbuffered, so a Python job's lines reach the run when printed, in order.
        return {
            **inherited,
            "PYTHONUNBUFFERED": "1",
            **job.env,
            "CUDA_VISIBLE_DEVICES": ",".join(devices),
        }

    def offered_devices(self) -> list[int]:
        """The configured devices, or those NVML finds when none are configured."""
        if self.devices is not None:
            return list(self.devices)
        return discover_gpu_indices() or []

    @contextlib.asynccontextmanager
    async def _claim_devices(self, count: int) -> AsyncIterator[tuple[str, ...]]:
        devices = self.offered_devices()
        if not devices:
            yield ()
            return
        if count > len(devices):
            raise GpuCapacityError(
                f"job needs {count} GPUs but this machine offers {len(devices)} (devices {devices})"
            )
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        held: dict[int, int] = {}
        try:
            while len(held) < count:
                for device in devices:
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
            env = self.job_environment(job, devices)
            started = time.monotonic()
            # Only this process holds the lifeline's write end (os.pipe is not inherited);
            # when this process dies, the guard sees the pipe close and kills the job.
            lifeline_read, lifeline_write = os.pipe()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gpuflow.compute.job_guard", str(lifeline_read), "--",
                    *checked_command(job.argv, job.interpreter, f"host {socket.gethostname()}"),
                    cwd=job.workdir,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    pass_fds=(lifeline_read,),
                    start_new_session=True,  # its own process group: stopping it stops all
                )  # fmt: skip
            except BaseException:
                os.close(lifeline_write)
                raise
            finally:
                os.close(lifeline_read)
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
            finally:
                os.close(lifeline_write)
            return JobResult(exit_code, time.monotonic() - started, devices, tuple(tail))

    @staticmethod
    async def _pump(
        process: asyncio.subprocess.Process,
        on_line: LineHandler,
        tail: collections.deque[str],
    ) -> int:
        assert process.stdout is not None
        lines = OutputLines(_LINE_LIMIT)
        while chunk := await process.stdout.read(_READ_CHUNK):
            for line in lines.feed(chunk):
                tail.append(line)
                await on_line(line)
        for line in lines.close():
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
