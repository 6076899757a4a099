"""How each replica of a PyTorchJob ended, kept after its pod is gone.

Training-operator releases before v1.9.4 delete a failed job's pods before they write the
Failed condition (kubeflow/trainer#3419, fixed by #3420), so the pods listed after the
job ended may be none. A watch on the job's pods sees every container termination as it
happens, the DELETED event included (it carries the pod's last state); the record keeps
the last one per replica, and the exit code is read from it whatever the operator did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from gpuflow.compute.kubernetes.api import API_FAILURES_TOLERATED, api_error, transient
from gpuflow.compute.kubernetes.manifest import CONTAINER_NAME, OPERATOR_ROLE_LABEL
from gpuflow.compute.kubernetes.status import container_exit, container_started
from gpuflow.core.logs import RunLogger

_WATCH_SILENCE_MARGIN_S = 30


@dataclass(frozen=True)
class ReplicaExit:
    pod: str
    is_master: bool
    exit_code: int
    reason: str  # the container's (OOMKilled, Error, Completed)
    pod_reason: str  # the pod's (Evicted, Preempted, DeadlineExceeded)


class ReplicaExits:
    """The latest container termination of every replica (by pod name: a restarted
    replica keeps its name, and its newest ending is the one that counts)."""

    def __init__(self) -> None:
        self.by_pod: dict[str, ReplicaExit] = {}
        self.running: set[str] = set()  # replicas seen running, no ending seen yet
        self._failed = asyncio.Event()

    def record(self, pod: Any) -> None:
        """Note ``pod``'s (a ``V1Pod``) container termination, if it has one."""
        ended = container_exit(pod, CONTAINER_NAME)
        if ended is None:
            if container_started(pod, CONTAINER_NAME):
                self.running.add(pod.metadata.name)
            return
        self.running.discard(pod.metadata.name)
        code, reason = ended
        role = (pod.metadata.labels or {}).get(OPERATOR_ROLE_LABEL, "")
        self.by_pod[pod.metadata.name] = ReplicaExit(
            pod=pod.metadata.name,
            is_master=role.lower() == "master",
            exit_code=code,
            reason=reason,
            pod_reason=(pod.status.reason or "") if pod.status else "",
        )
        if code != 0:
            self._failed.set()

    async def await_failure(self, within_s: float) -> None:
        """Wait up to ``within_s`` for a replica's failure to be seen, while a replica seen
        running has no ending yet (none can come for replicas that never started)."""
        if self._failed.is_set() or not self.running:
            return
        try:
            await asyncio.wait_for(self._failed.wait(), timeout=within_s)
        except TimeoutError:
            return

    def master_first(self) -> list[ReplicaExit]:
        return sorted(self.by_pod.values(), key=lambda ended: (not ended.is_master, ended.pod))


class PodWatcher:
    """Hands every state of the job's pods to ``on_pod``, from before the job exists.

    ``open`` (before the job is created) takes the resourceVersion to watch from, so no
    pod event can fall between creation and the first watch; ``run`` follows from there,
    resuming after drops and re-listing after 410 Gone. When the watch keeps failing it
    stops: the pod lists of the supervising loop still feed the record."""

    def __init__(
        self,
        core: CoreV1Api,
        namespace: str,
        label_selector: str,
        on_pod: Callable[[Any], None],
        *,
        poll_interval_s: float,
        watch_timeout_s: int,
        log: RunLogger,
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_pod = on_pod
        self.poll_interval_s = poll_interval_s
        self.watch_timeout_s = watch_timeout_s
        self.log = log
        self.version = ""

    async def open(self) -> None:
        """List the pods once: record them and the version to watch from."""
        try:
            listed = await self.core.list_namespaced_pod(
                self.namespace, label_selector=self.label_selector
            )
        except ApiException as error:
            raise api_error(f"listing pods ({self.label_selector})", error) from None
        for pod in listed.items:
            self.on_pod(pod)
        self.version = listed.metadata.resource_version or ""

    async def run(self) -> None:
        failures = 0
        while failures <= API_FAILURES_TOLERATED:
            try:
                async with Watch() as watch:
                    async for event in watch.stream(
                        self.core.list_namespaced_pod,
                        self.namespace,
                        label_selector=self.label_selector,
                        resource_version=self.version,
                        timeout_seconds=self.watch_timeout_s,
                        allow_watch_bookmarks=True,
                        # The server ends the watch by timeout_seconds: a longer silence is
                        # a dead link.
                        _request_timeout=aiohttp.ClientTimeout(
                            sock_read=self.watch_timeout_s + _WATCH_SILENCE_MARGIN_S
                        ),
                    ):
                        self.version = watch.resource_version or self.version
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self.on_pod(event["object"])
                failures = 0
                continue
            except ApiException as error:
                if error.status == 410:
                    self.log.info("Pod watch expired (410 Gone): listing the pods again")
                    await self.open()
                    continue
                if not transient(error):
                    self.log.warning(
                        "Cannot watch the pods (%s): HTTP %s %s; exit codes come from pod "
                        "lists alone and may be lost where the operator deletes failed pods",
                        self.label_selector,
                        error.status,
                        error.reason,
                    )
                    return
                failed: BaseException = error
            except (aiohttp.ClientError, TimeoutError) as error:
                failed = error
            failures += 1
            self.log.info("Pod watch dropped (%s): resuming", type(failed).__name__)
            await asyncio.sleep(self.poll_interval_s)
        self.log.warning(
            "Watching the pods (%s) keeps failing: exit codes come from pod lists alone",
            self.label_selector,
        )
