"""The logs of a PyTorchJob's pods: every pod's into ``<workdir>/logs/``, the Master's
into the job's line handler, each resumed after a dropped connection without repeats.

The copies are capped, per pod and for the whole job, so a chatty job cannot fill the NAS:
a copy that reaches its limit ends with a note saying so, and the run's log says how much
each pod's copy left out and how to read the full log from the pod (``kubectl logs``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import aiohttp
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from gpuflow.compute.base import LineHandler
from gpuflow.compute.kubernetes.api import API_FAILURES_TOLERATED, transient
from gpuflow.compute.kubernetes.manifest import CONTAINER_NAME, OPERATOR_ROLE_LABEL
from gpuflow.compute.kubernetes.status import container_exit, container_started
from gpuflow.core.logs import RunLogger

# Reconnect after this long without a line, in case the link died quietly.
_LOG_SILENCE_S = 300


@dataclass
class CopyLimits:
    """Bytes the workspace copies of a job's pod logs may take, per pod and all together."""

    per_pod: int
    per_job: int
    job_used: int = 0


@dataclass
class _PodCopy:
    """What one pod's copy (one file, kept across a restarted replica) holds and left out."""

    path: Path
    copied: int = 0
    dropped_bytes: int = 0
    dropped_lines: int = 0
    closed: bool = False


class PodLogs:
    """One log follower per pod (by uid: a restarted replica keeps its pod name)."""

    def __init__(
        self,
        core: CoreV1Api,
        namespace: str,
        log_dir: Path,
        on_line: LineHandler,
        tail: collections.deque[str],
        *,
        poll_interval_s: float,
        log: RunLogger,
        limits: CopyLimits,
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.log_dir = log_dir
        self.on_line = on_line
        self.tail = tail
        self.poll_interval_s = poll_interval_s
        self.log = log
        self.limits = limits
        self.copies: dict[str, _PodCopy] = {}  # by pod name, as the files are
        self.followers: dict[str, asyncio.Task[None]] = {}

    def follow(self, pods: list[Any]) -> None:
        """Start following every pod of ``pods`` whose container has logs to read."""
        for pod in pods:
            uid, name = pod.metadata.uid, pod.metadata.name
            if uid in self.followers or not container_started(pod, CONTAINER_NAME):
                continue
            is_master = (pod.metadata.labels or {}).get(OPERATOR_ROLE_LABEL, "").lower() == "master"
            task = asyncio.create_task(self._follow(name, is_master), name=f"log {name}")
            self.followers[uid] = task

    def raise_failure(self) -> None:
        """Surface an error of a log stream (the line handler raising, the API refusing)."""
        for task in self.followers.values():
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def finish(self, pods: list[Any], drain_s: float) -> None:
        """Let the streams of finished containers reach their end; the copies of pods still
        running (the operator stops them after a failure) end where they are."""
        self.follow(pods)
        still_running = {
            pod.metadata.uid for pod in pods if container_exit(pod, CONTAINER_NAME) is None
        }
        draining = []
        for uid, task in self.followers.items():
            if uid in still_running:
                task.cancel()
            else:
                draining.append(task)
        if draining:
            _, late = await asyncio.wait(draining, timeout=drain_s)
            for task in late:
                task.cancel()
        self.raise_failure()

    async def stop(self) -> None:
        for task in self.followers.values():
            task.cancel()
        await asyncio.gather(*self.followers.values(), return_exceptions=True)

    async def _follow(self, pod: str, is_master: bool) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        record = self.copies.setdefault(pod, _PodCopy(self.log_dir / f"{pod}.log"))
        dropped_before = record.dropped_bytes, record.dropped_lines
        try:
            with record.path.open("a", encoding="utf-8") as copy:
                await self._stream(pod, is_master, record, copy)
        finally:
            # Also when cancelled: a pod still running at the end stops being copied here.
            self._report_dropped(pod, record, dropped_before)

    async def _stream(self, pod: str, is_master: bool, record: _PodCopy, copy: TextIO) -> None:
        last_stamp: tuple[str, int] | None = None
        last_seen = time.time()
        failures = 0
        while True:
            # After a drop, resume a little before the last line; duplicates are skipped.
            resume: dict[str, Any] = {}
            if last_stamp:
                resume["since_seconds"] = int(time.time() - last_seen) + 2
            try:
                response = await self._open_log(pod, resume)
            except (ApiException, aiohttp.ClientError, TimeoutError) as error:
                if isinstance(error, ApiException) and error.status in (400, 404):
                    return  # pod gone, or its container never started
                if not transient(error):
                    raise
                failures += 1
                if failures > API_FAILURES_TOLERATED:
                    # The job goes on; only this copy of its log stops here.
                    self.log.warning("Giving up on the log of %s: %s", pod, error)
                    return
                await asyncio.sleep(min(1.0, self.poll_interval_s))
                continue
            failures = 0
            try:
                async for raw in response.content:
                    stamp_text, _, text = (
                        raw.decode("utf-8", errors="replace").rstrip("\r\n").partition(" ")
                    )
                    stamp = parse_stamp(stamp_text)
                    if last_stamp is not None and stamp <= last_stamp:
                        continue  # already copied before the reconnect
                    last_stamp, last_seen = stamp, time.time()
                    self._copy(pod, record, copy, text)
                    if is_master:
                        self.tail.append(text)
                        await self.on_line(text)
            except (aiohttp.ClientError, TimeoutError) as error:
                self.log.info("Log stream of %s dropped (%s): resuming", pod, error)
            finally:
                response.release()
            if await self._container_done(pod):
                return
            await asyncio.sleep(min(1.0, self.poll_interval_s))

    def _copy(self, pod: str, record: _PodCopy, copy: TextIO, text: str) -> None:
        """Append one line to the pod's copy while both limits leave room for it."""
        size = len(text.encode("utf-8", errors="replace")) + 1
        limits = self.limits
        if not record.closed:
            if record.copied + size > limits.per_pod:
                self._close_copy(pod, record, copy, f"its limit of {limits.per_pod} bytes")
            elif limits.job_used + size > limits.per_job:
                self._close_copy(
                    pod, record, copy, f"the job's limit of {limits.per_job} bytes for all pods"
                )
            else:
                copy.write(text + "\n")
                copy.flush()
                record.copied += size
                limits.job_used += size
                return
        record.dropped_bytes += size
        record.dropped_lines += 1

    def _close_copy(self, pod: str, record: _PodCopy, copy: TextIO, limit: str) -> None:
        record.closed = True
        copy.write(
            f"[gpuflow: this copy stops here, at {limit}; the pod has the full log: "
            f"{self._kubectl_logs(pod)}]\n"
        )
        copy.flush()
        self.log.warning(
            "The copy of pod %s's log in %s reached %s; further lines are not copied "
            "(the full log: %s)",
            pod,
            record.path,
            limit,
            self._kubectl_logs(pod),
        )

    def _report_dropped(self, pod: str, record: _PodCopy, before: tuple[int, int]) -> None:
        dropped_bytes = record.dropped_bytes - before[0]
        dropped_lines = record.dropped_lines - before[1]
        if dropped_lines:
            self.log.warning(
                "%d bytes (%d lines) of pod %s's log were not copied to %s; the full log is "
                "in the pod while it exists: %s",
                dropped_bytes,
                dropped_lines,
                pod,
                record.path,
                self._kubectl_logs(pod),
            )

    def _kubectl_logs(self, pod: str) -> str:
        return f"kubectl logs -n {self.namespace} {pod} -c {CONTAINER_NAME}"

    async def _open_log(self, pod: str, resume: dict[str, Any]) -> aiohttp.ClientResponse:
        response = cast(
            aiohttp.ClientResponse,
            await self.core.read_namespaced_pod_log(
                pod,
                self.namespace,
                container=CONTAINER_NAME,
                follow=True,
                timestamps=True,
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(sock_read=_LOG_SILENCE_S),
                **resume,
            ),
        )
        # Unpreloaded responses are not checked by the client: an error status (the pod
        # deleted meanwhile, say) would otherwise be copied into the log as a line.
        if not 200 <= response.status <= 299:
            reason = response.reason or ""
            response.release()
            raise ApiException(status=response.status, reason=reason)
        return response

    async def _container_done(self, pod: str) -> bool:
        try:
            current = await self.core.read_namespaced_pod(pod, self.namespace)
        except ApiException:
            return True
        return container_exit(current, CONTAINER_NAME) is not None


def parse_stamp(text: str) -> tuple[str, int]:
    """An RFC3339Nano timestamp as a comparable (seconds part, nanoseconds) pair."""
    seconds, _, rest = text.rstrip("Z").partition(".")
    return seconds, int(rest.ljust(9, "0")[:9]) if rest.isdigit() else 0
