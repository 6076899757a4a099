"""Following a PyTorchJob's status: the watch API from a resourceVersion, reconnecting
after a dropped connection, re-reading after 410 Gone, polling when watching keeps failing."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from kubernetes_asyncio.client import CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from gpuflow.compute.kubernetes.api import api_error
from gpuflow.compute.kubernetes.manifest import GROUP, PLURAL, VERSION
from gpuflow.compute.kubernetes.status import JobStartError, JobStatus, job_status
from gpuflow.core.logs import RunLogger

# Consecutive failed watch requests after which the job is polled instead.
_WATCH_FAILURES_BEFORE_POLLING = 3
# A watch stream that ends sooner than this without an event counts as a failure.
_SHORT_WATCH_S = 1.0
_WATCH_SILENCE_MARGIN_S = 30


class JobWatcher:
    """Puts every status of one PyTorchJob into ``statuses``; an error ends the feed there."""

    def __init__(
        self,
        custom: CustomObjectsApi,
        namespace: str,
        name: str,
        *,
        poll_interval_s: float,
        watch_timeout_s: int,
        log: RunLogger,
    ) -> None:
        self.custom = custom
        self.namespace = namespace
        self.name = name
        self.poll_interval_s = poll_interval_s
        self.watch_timeout_s = watch_timeout_s
        self.log = log
        self.statuses: asyncio.Queue[JobStatus | BaseException] = asyncio.Queue()

    async def next_status(self, current: JobStatus, wait_s: float) -> JobStatus:
        """The newest status reported, waiting up to ``wait_s`` for one; raises the error
        that ended the feed."""
        try:
            item = await asyncio.wait_for(self.statuses.get(), timeout=wait_s)
        except TimeoutError:
            return current
        while True:
            if isinstance(item, BaseException):
                raise item
            current = item
            if current.phase.terminal:
                return current
            try:
                item = self.statuses.get_nowait()
            except asyncio.QueueEmpty:
                return current

    async def run(self) -> None:
        """Feed ``statuses`` from the watch API, resuming at the last resourceVersion."""
        try:
            version = await self.poll()
            failures = 0
            while failures < _WATCH_FAILURES_BEFORE_POLLING:
                opened = time.monotonic()
                events = 0
                try:
                    async with Watch() as watch:
                        async for event in watch.stream(
                            self.custom.list_namespaced_custom_object,
                            GROUP,
                            VERSION,
                            self.namespace,
                            PLURAL,
                            field_selector=f"metadata.name={self.name}",
                            resource_version=version,
                            timeout_seconds=self.watch_timeout_s,
                            allow_watch_bookmarks=True,
                            # A half-open connection must not hang us: the server ends the
                            # watch by timeout_seconds, so a longer silence is a dead link.
                            _request_timeout=aiohttp.ClientTimeout(
                                sock_read=self.watch_timeout_s + _WATCH_SILENCE_MARGIN_S
                            ),
                        ):
                            events += 1
                            version = watch.resource_version or version
                            if event["type"] == "DELETED":
                                raise JobStartError(
                                    f"PyTorchJob {self.namespace}/{self.name} was deleted by "
                                    "someone else before it finished",
                                    retryable=True,
                                )
                            if event["type"] in ("ADDED", "MODIFIED"):
                                await self.statuses.put(job_status(event["raw_object"]))
                except ApiException as error:
                    if error.status != 410:
                        raise
                    # Our resourceVersion is too old: start again from a fresh read.
                    self.log.info("Watch of %s expired (410 Gone): re-reading the job", self.name)
                    version = await self.poll()
                    continue
                except (aiohttp.ClientError, TimeoutError) as error:
                    self.log.warning(
                        "Watch of %s dropped (%s): resuming at resourceVersion %s",
                        self.name,
                        type(error).__name__,
                        version,
                    )
                    failures += 1
                    await asyncio.sleep(self.poll_interval_s)
                    continue
                short = time.monotonic() - opened < _SHORT_WATCH_S
                failures = failures + 1 if (events == 0 and short) else 0
            self.log.warning("Watching %s keeps failing: polling it instead", self.name)
            while True:
                await asyncio.sleep(self.poll_interval_s)
                await self.poll()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            await self.statuses.put(error)

    async def poll(self) -> str:
        """Read the job once, report its status; returns its resourceVersion."""
        try:
            obj = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        except ApiException as error:
            if error.status == 404:
                raise JobStartError(
                    f"PyTorchJob {self.namespace}/{self.name} disappeared before it finished",
                    retryable=True,
                ) from None
            raise api_error(f"reading PyTorchJob {self.name}", error) from None
        status = job_status(obj)
        await self.statuses.put(status)
        return status.resource_version
