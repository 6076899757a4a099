"""One PyTorchJob from creation to its end: create it (and its Secret), follow its status
and pods, say why it does not start, and class its exit code (from every replica's
termination seen while watching, so pods the operator deleted still count); delete it
when the flow stops waiting.

When the flow runs in a pod, the PyTorchJob is owned by that pod's Job, so a dead flow
cannot leave GPUs busy behind it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from gpuflow_progress import ExitCode
from kubernetes_asyncio.client import (
    ApiClient,
    ApiextensionsV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1ObjectMeta,
    V1OwnerReference,
    V1Secret,
)
from kubernetes_asyncio.client.exceptions import ApiException

from gpuflow.compute.base import JobResult, JobSpec, LineHandler
from gpuflow.compute.kubernetes.api import API_FAILURES_TOLERATED, api_error, transient
from gpuflow.compute.kubernetes.crd import crd_schema, validate_against_crd
from gpuflow.compute.kubernetes.logs import CopyLimits, PodLogs
from gpuflow.compute.kubernetes.manifest import (
    API_VERSION,
    CONTAINER_NAME,
    CRD_NAME,
    GROUP,
    JOB_LABEL,
    KIND,
    OPERATOR_JOB_LABEL,
    PLURAL,
    VERSION,
    OwnerReference,
    job_name,
    label_value,
)
from gpuflow.compute.kubernetes.replicas import PodWatcher, ReplicaExits
from gpuflow.compute.kubernetes.status import (
    Blocker,
    JobPhase,
    JobStartError,
    JobStatus,
    PodProblem,
    container_started,
    exit_class_code,
    pod_problem,
)
from gpuflow.compute.kubernetes.watch import JobWatcher
from gpuflow.core.logs import run_logger

if TYPE_CHECKING:
    from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob

_TAIL_LINES = 20
_POD_NAME_ENV = "GPUFLOW_FLOW_POD_NAME"


class PyTorchJobRun:
    """One submission of ``job`` through ``target``: ``await run()`` returns its result."""

    def __init__(
        self, target: KubernetesPyTorchJob, api: ApiClient, job: JobSpec, on_line: LineHandler
    ) -> None:
        self.target = target
        self.api = api
        self.job = job
        self.name = job_name(job.name)
        self.namespace = target.pytorchjob.namespace
        self.custom = CustomObjectsApi(api)
        self.core = CoreV1Api(api)
        self.log = run_logger("gpuflow.kubernetes")
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.watcher = JobWatcher(
            self.custom,
            self.namespace,
            self.name,
            poll_interval_s=target.poll_interval_s,
            watch_timeout_s=target.watch_timeout_s,
            log=self.log,
        )
        self.logs = PodLogs(
            self.core,
            self.namespace,
            job.workdir / "logs",
            on_line,
            self.tail,
            poll_interval_s=target.poll_interval_s,
            log=self.log,
            limits=CopyLimits(per_pod=target.pod_log_max_bytes, per_job=target.job_log_max_bytes),
        )
        self.exits = ReplicaExits()
        self.pod_watcher = PodWatcher(
            self.core,
            self.namespace,
            f"{OPERATOR_JOB_LABEL}={self.name}",
            self._pod_seen,
            poll_interval_s=target.poll_interval_s,
            watch_timeout_s=target.watch_timeout_s,
            log=self.log,
        )
        self.reported: set[str] = set()
        self.submitted = False
        self.last_pods: list[Any] = []
        self.pod_list_failures = 0

    async def run(self) -> JobResult:
        started = time.monotonic()
        watching: list[asyncio.Task[None]] = []
        try:
            await self._create()
            watching.append(asyncio.create_task(self.watcher.run(), name=f"watch {self.name}"))
            watching.append(
                asyncio.create_task(self.pod_watcher.run(), name=f"watch pods of {self.name}")
            )
            exit_code = await self._supervise()
        except BaseException:
            # Cancelled, failed to start, or the flow broke: never leave GPUs busy.
            if self.submitted:
                await asyncio.shield(self._delete())
            raise
        finally:
            for task in watching:
                task.cancel()
            await asyncio.gather(*watching, return_exceptions=True)
            await self.logs.stop()
        return JobResult(exit_code, time.monotonic() - started, (), tuple(self.tail))

    # ---- creation -----------------------------------------------------------------

    async def _create(self) -> None:
        manifest = self.target.pytorchjob_manifest(
            self.job, self.name, owner=await self._flow_owner()
        )
        await self._validate(manifest)
        # From before the job exists: no replica can end unseen.
        await self.pod_watcher.open()
        self.submitted = True  # from here on, a failure or cancellation deletes the job
        try:
            created = await self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, manifest, field_validation="Strict"
            )
        except ApiException as error:
            raise api_error(f"creating PyTorchJob {self.namespace}/{self.name}", error) from None
        if self.target.secret_env:
            # The job waits suspended: its Secret is born owned by it, then it may start.
            owner = OwnerReference(
                api_version=API_VERSION, kind=KIND, name=self.name, uid=created["metadata"]["uid"]
            )
            await self._create_secret(f"{self.name}-env", owner)
            if not self.target.pytorchjob.kueue_queue:  # Kueue resumes it on admission
                await self._resume()
        self.log.info(
            "Created PyTorchJob %s/%s (%d GPU(s), image %s)",
            self.namespace,
            self.name,
            self.job.gpus,
            self.target.pytorchjob.image,
        )

    async def _validate(self, manifest: dict[str, Any]) -> None:
        """Check the manifest against the CRD the cluster serves before sending it."""
        try:
            crd = await ApiextensionsV1Api(self.api).read_custom_resource_definition(CRD_NAME)
        except ApiException as error:
            if error.status == 404:
                raise JobStartError(
                    f"the cluster has no {CRD_NAME} CRD: is the Kubeflow training operator "
                    "installed?",
                    retryable=False,
                ) from None
            if error.status != 403:
                raise api_error(f"reading CRD {CRD_NAME}", error) from None
            # Not allowed to read CRDs: the server still validates (fieldValidation=Strict).
            self.log.warning("Cannot read CRD %s (forbidden): relying on the API server", CRD_NAME)
            return
        schema = crd_schema(self.api.sanitize_for_serialization(crd))
        validate_against_crd(manifest, schema)

    async def _flow_owner(self) -> OwnerReference | None:
        """The Job of the flow-run pod we run in, if any (same namespace only)."""
        pod_name = os.environ.get(_POD_NAME_ENV) or (
            os.environ.get("HOSTNAME") if os.environ.get("KUBERNETES_SERVICE_HOST") else None
        )
        if not pod_name:
            return None
        try:
            pod = await self.core.read_namespaced_pod(pod_name, self.namespace)
        except ApiException as error:
            self.log.warning(
                "Flow pod %s not readable in namespace %s (%s): the PyTorchJob gets no owner",
                pod_name,
                self.namespace,
                error.reason,
            )
            return None
        for ref in pod.metadata.owner_references or []:
            if ref.kind == "Job":
                return OwnerReference(
                    api_version=ref.api_version, kind=ref.kind, name=ref.name, uid=ref.uid
                )
        self.log.warning("Flow pod %s has no owning Job: the PyTorchJob gets no owner", pod_name)
        return None

    async def _create_secret(self, secret_name: str, owner: OwnerReference) -> None:
        body = V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=V1ObjectMeta(
                name=secret_name,
                namespace=self.namespace,
                labels={JOB_LABEL: label_value(self.job.name)},
                owner_references=[
                    V1OwnerReference(
                        api_version=owner.api_version,
                        kind=owner.kind,
                        name=owner.name,
                        uid=owner.uid,
                        block_owner_deletion=True,
                        controller=False,
                    )
                ],
            ),
            type="Opaque",
            string_data={
                key: value.get_secret_value() for key, value in self.target.secret_env.items()
            },
        )
        try:
            await self.core.create_namespaced_secret(self.namespace, body)
        except ApiException as error:
            # Not api_error: the server's reply may quote what we sent, values included.
            raise JobStartError(
                f"creating Secret {self.namespace}/{secret_name} failed: HTTP {error.status} "
                f"{error.reason}",
                retryable=error.status is None or error.status >= 500 or error.status == 429,
            ) from None

    async def _resume(self) -> None:
        try:
            await self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                # A list: the client labels it a JSON patch (and a dict too, wrongly).
                [{"op": "replace", "path": "/spec/runPolicy/suspend", "value": False}],
            )
        except ApiException as error:
            raise api_error(f"resuming PyTorchJob {self.namespace}/{self.name}", error) from None

    async def _delete(self) -> None:
        try:
            await self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, propagation_policy="Foreground"
            )
            self.log.info("Deleted PyTorchJob %s/%s", self.namespace, self.name)
        except ApiException as error:
            if error.status != 404:
                self.log.error("Could not delete PyTorchJob %s: %s", self.name, error.reason)

    # ---- following the job ----------------------------------------------------------

    async def _supervise(self) -> int:
        """Wait for the job to end, explaining delays; returns the classed exit code."""
        settings = self.target
        started = time.monotonic()
        running_since: float | None = None
        status = JobStatus(JobPhase.PENDING, "", "", "")
        pull_failing_since: dict[str, float] = {}
        while True:
            previous = status.phase
            status = await self.watcher.next_status(status, settings.poll_interval_s)
            if status.phase != previous:
                self.log.info(
                    "PyTorchJob %s: %s%s",
                    self.name,
                    status.phase.value,
                    f" ({status.reason}: {status.message})" if status.reason else "",
                )
            self.logs.raise_failure()
            pods = await self._pods()
            self.logs.follow(pods)
            now = time.monotonic()
            if status.phase.terminal:
                break
            if running_since is None and (
                status.phase == JobPhase.RUNNING
                or any(container_started(pod, CONTAINER_NAME) for pod in pods)
            ):
                running_since = now
            if running_since is None:
                await self._check_pending(pods, now - started, pull_failing_since, now)
            elif now - running_since > self.job.timeout_s:
                await self._delete()
                self.tail.append(f"gpuflow: job exceeded its timeout of {self.job.timeout_s:.0f}s")
                return int(ExitCode.RESOURCE_ERROR)
        await self.logs.finish(await self._pods(), self.target.log_drain_s)
        return await self._exit_code(status)

    async def _pods(self) -> list[Any]:
        """The job's pods; an API hiccup reuses the last answer (a bounded number of times):
        a long job must not die of one failed list call."""
        try:
            listed = await self.core.list_namespaced_pod(
                self.namespace, label_selector=f"{OPERATOR_JOB_LABEL}={self.name}"
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            if not transient(error):
                raise
            self.pod_list_failures += 1
            if self.pod_list_failures > API_FAILURES_TOLERATED:
                raise JobStartError(
                    f"listing the pods of PyTorchJob {self.name} failed "
                    f"{self.pod_list_failures} times in a row: {error}",
                    retryable=True,
                ) from None
            self.log.warning("Listing pods of %s failed (%s): trying again", self.name, error)
            return self.last_pods
        self.pod_list_failures = 0
        self.last_pods = list(listed.items)
        for pod in self.last_pods:
            self.exits.record(pod)
        return self.last_pods

    def _pod_seen(self, pod: Any) -> None:
        """A pod's state from the watch: its ending recorded, its log followed at once
        (before the operator may delete it)."""
        self.exits.record(pod)
        self.logs.follow([pod])

    async def _check_pending(
        self,
        pods: list[Any],
        waited_s: float,
        pull_failing_since: dict[str, float],
        now: float,
    ) -> None:
        """Explain why the job is not running yet; raise when it never will (or too late)."""
        settings = self.target
        problems = [problem for pod in pods if (problem := pod_problem(pod)) is not None]
        for problem in problems:
            described = problem.describe()
            if described not in self.reported:
                self.reported.add(described)
                self.log.warning("PyTorchJob %s waits: %s", self.name, described)
            if problem.blocker.fatal:
                raise JobStartError(
                    await self._with_events(f"PyTorchJob {self.name} cannot start", problem),
                    retryable=False,
                )
            if problem.blocker == Blocker.IMAGE_PULL:
                since = pull_failing_since.setdefault(problem.pod, now)
                if now - since > settings.image_pull_grace_s:
                    raise JobStartError(
                        await self._with_events(
                            f"PyTorchJob {self.name}: image pull failing for over "
                            f"{settings.image_pull_grace_s:.0f}s",
                            problem,
                        ),
                        retryable=True,
                    )
            else:
                pull_failing_since.pop(problem.pod, None)
        if waited_s > settings.pending_deadline_s:
            first = problems[0] if problems else None
            raise JobStartError(
                await self._with_events(
                    f"PyTorchJob {self.name} did not start running within "
                    f"{settings.pending_deadline_s:.0f}s",
                    first,
                ),
                retryable=True,
            )

    async def _with_events(self, headline: str, problem: PodProblem | None) -> str:
        """``headline`` plus the problem and the pod's latest warning events."""
        lines = [headline + (f": {problem.describe()}" if problem else "")]
        if problem is not None:
            try:
                events = await self.core.list_namespaced_event(
                    self.namespace, field_selector=f"involvedObject.name={problem.pod}"
                )
                warnings = [e for e in events.items if e.type == "Warning"][-3:]
                lines += [f"  event {e.reason}: {e.message}" for e in warnings]
            except ApiException as error:
                lines.append(f"  (events unavailable: {error.reason})")
        return "\n".join(lines)

    async def _exit_code(self, status: JobStatus) -> int:
        """The Master's exit code, else the first failing worker's, in the job's classes."""
        await self._pods()
        if status.phase == JobPhase.FAILED:
            # The job's status and its pods come on two watches: let the pods' catch up.
            await self.exits.await_failure(self.target.log_drain_s)
        for ended in self.exits.master_first():
            if ended.exit_code != 0 or status.phase == JobPhase.SUCCEEDED:
                if ended.exit_code != 0:
                    self.tail.append(
                        f"gpuflow: pod {ended.pod} exited {ended.exit_code} {ended.reason}"
                    )
                return exit_class_code(ended.exit_code, ended.reason, ended.pod_reason)
        if status.phase == JobPhase.SUCCEEDED:
            return int(ExitCode.SUCCESS)
        # Failed with no container exit to show (deadline exceeded, pods evicted and gone).
        self.tail.append(f"gpuflow: PyTorchJob failed: {status.reason}: {status.message}")
        return int(ExitCode.RESOURCE_ERROR)
