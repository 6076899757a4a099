"""The Kubernetes compute target: the GPU job as a Kubeflow PyTorchJob (Master + Workers).

The prefect-kubernetes worker launches only batch/v1 Jobs, so the flow (itself a pod
of a ``kubernetes`` work pool) creates and watches the PyTorchJob through the
custom-objects API:

1. build the manifest as data (``blocks/pytorchjob_manifest.py``), validate it against
   the CRD schema the cluster serves, and create it with ``fieldValidation=Strict``;
   secret values go into a Secret of their own, owned by the job, never the manifest;
2. watch its conditions with the watch API from a resourceVersion (reconnecting after
   a dropped connection, falling back to polling when watching keeps failing);
3. while no pod runs, say why: unschedulable (the scheduler's words), image pull
   failures (after a grace period; registry throttling only waits), containers that
   cannot be created and invalid images (at once), and a pre-running deadline;
4. stream the Master's log into ``on_line`` and every pod's log into
   ``<workdir>/logs/`` while the pods exist (cleanPodPolicy/TTL delete them later);
5. map exit codes to DESIGN.md's classes; on cancellation or any error, delete the
   job with propagationPolicy Foreground.

When the flow runs in a pod, the PyTorchJob is owned by that pod's Job, so a dead
flow cannot leave GPUs busy behind it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar, cast

import aiohttp
from gpuflow_progress import ExitCode
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import (
    ApiClient,
    ApiextensionsV1Api,
    Configuration,
    CoreV1Api,
    CustomObjectsApi,
    V1ObjectMeta,
    V1Secret,
)
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.watch import Watch
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from prefect_kubernetes.credentials import KubernetesClusterConfig
from pydantic import Field, SecretStr

from blocks.compute import ComputeTarget, JobResult, JobSpec, LineHandler
from blocks.pytorchjob_manifest import (
    API_VERSION,
    CONTAINER_NAME,
    CRD_NAME,
    GROUP,
    JOB_LABEL,
    KIND,
    OPERATOR_JOB_LABEL,
    OPERATOR_ROLE_LABEL,
    PLURAL,
    VERSION,
    ManifestError,
    OwnerReference,
    PyTorchJobConfig,
    build_pytorchjob,
    crd_schema,
    job_name,
    label_value,
    validate_against_crd,
)
from blocks.pytorchjob_status import (
    Blocker,
    JobPhase,
    JobStartError,
    JobStatus,
    PodProblem,
    container_exit,
    container_started,
    exit_class_code,
    job_status,
    pod_problem,
)

_TAIL_LINES = 20
# Consecutive failed watch requests after which the job is polled instead.
_WATCH_FAILURES_BEFORE_POLLING = 3
# A watch stream that ends sooner than this without an event counts as a failure.
_SHORT_WATCH_S = 1.0
_POD_NAME_ENV = "GPUFLOW_FLOW_POD_NAME"
_WATCH_SILENCE_MARGIN_S = 30
_LOG_SILENCE_S = 300
# Consecutive failed calls of one kind (pod lists, log reads) before giving up on them.
_API_FAILURES_TOLERATED = 10


class _NoSecretBodies(logging.Filter):
    """kubernetes_asyncio logs every response body at DEBUG level: a Secret's included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("response body"):
            return True
        body = record.args[0] if isinstance(record.args, tuple) and record.args else b""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        return '"kind":"Secret"' not in text.replace(" ", "")


logging.getLogger("kubernetes_asyncio.client.rest").addFilter(_NoSecretBodies())


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("gpuflow.kubernetes")


class KubernetesPyTorchJob(ComputeTarget):
    """Runs each job as a Kubeflow PyTorchJob and follows it to the end."""

    _block_type_name = "gpuflow kubernetes pytorchjob"
    _block_type_slug = "gpuflow-kubernetes-pytorchjob"
    _description = "Run GPU jobs as Kubeflow PyTorchJobs (Master + Workers) on Kubernetes."
    kind: ClassVar[str] = "kubernetes"

    pytorchjob: PyTorchJobConfig
    cluster_config: KubernetesClusterConfig | None = Field(
        default=None,
        description="Cluster to use; unset: in-cluster credentials, else KUBECONFIG.",
    )
    secret_env: dict[Annotated[str, Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")], SecretStr] = (
        Field(
            default_factory=dict,
            description="Env vars whose values go into a per-job Secret, never the manifest.",
        )
    )
    poll_interval_s: float = Field(default=5.0, gt=0, description="How often pods are checked.")
    pending_deadline_s: float = Field(
        default=900.0, gt=0, description="Longest wait for the job to start running."
    )
    image_pull_grace_s: float = Field(
        default=120.0, ge=0, description="How long a failing image pull may go on."
    )
    watch_timeout_s: int = Field(
        default=300, ge=1, description="Server-side timeout of one watch request."
    )
    log_drain_s: float = Field(
        default=30.0, ge=0, description="How long to wait for log streams after the job ends."
    )

    async def run(self, job: JobSpec, on_line: LineHandler) -> JobResult:
        self._check_job(job)
        async with self._api_client() as api:
            return await _Submission(self, api, job, on_line).run()

    def _check_job(self, job: JobSpec) -> None:
        """Refuse, before anything is sent, a job its pods could never start."""
        for index, value in enumerate([*job.argv, *job.env.values()]):
            if "\x00" in value:
                where = f"argv[{index}]" if index < len(job.argv) else "an env value"
                raise ManifestError(f"{where} of job {job.name!r} holds a NUL byte: {value!r}")
        # The interpreter and workdir must resolve inside the pod, i.e. on the NAS.
        mount = self.pytorchjob.nas_mount_path
        for what, path in (("interpreter", job.argv[0]), ("workdir", str(job.workdir))):
            posix = PurePosixPath(path)
            if posix.is_absolute() and not posix.is_relative_to(mount):
                raise ManifestError(
                    f"job {what} {path!r} is not under the NAS mount path {str(mount)!r}: "
                    "the job's pods could not find it"
                )

    @contextlib.asynccontextmanager
    async def _api_client(self) -> AsyncIterator[ApiClient]:
        try:
            if self.cluster_config is not None:
                source = f"cluster_config (context {self.cluster_config.context_name!r})"
                client = await kube_config.new_client_from_config_dict(
                    self.cluster_config.config, context=self.cluster_config.context_name
                )
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                source = "the pod's service account"
                configuration = Configuration()
                kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
                client = ApiClient(configuration)
            else:
                source = f"KUBECONFIG={os.environ.get('KUBECONFIG', '~/.kube/config')!r}"
                client = await kube_config.new_client_from_config()
        except (ConfigException, OSError) as error:
            raise ManifestError(
                f"no usable Kubernetes credentials from {source}: {error}; set the block's "
                "cluster_config, run in a pod, or point KUBECONFIG at a kubeconfig"
            ) from None
        async with client:
            yield client


@dataclass
class _Submission:
    """One PyTorchJob from creation to deletion (or the operator's TTL)."""

    target: KubernetesPyTorchJob
    api: ApiClient
    job: JobSpec
    on_line: LineHandler
    name: str = ""
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_TAIL_LINES)
    )
    statuses: asyncio.Queue[JobStatus | BaseException] = field(default_factory=asyncio.Queue)
    followers: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # by pod uid
    reported: set[str] = field(default_factory=set)
    submitted: bool = False
    last_pods: list[Any] = field(default_factory=list)
    pod_list_failures: int = 0

    def __post_init__(self) -> None:
        self.name = job_name(self.job.name)
        self.namespace = self.target.pytorchjob.namespace
        self.custom = CustomObjectsApi(self.api)
        self.core = CoreV1Api(self.api)
        self.log = _logger()
        self.log_dir = self.job.workdir / "logs"

    async def run(self) -> JobResult:
        started = time.monotonic()
        watcher: asyncio.Task[None] | None = None
        try:
            await self._create()
            watcher = asyncio.create_task(self._watch_job(), name=f"watch {self.name}")
            exit_code = await self._supervise()
        except BaseException:
            # Cancelled, failed to start, or the flow broke: never leave GPUs busy.
            if self.submitted:
                await asyncio.shield(self._delete())
            raise
        finally:
            tasks = [*self.followers.values(), *([watcher] if watcher else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return JobResult(exit_code, time.monotonic() - started, (), tuple(self.tail))

    # ---- creation -----------------------------------------------------------------

    async def _create(self) -> None:
        secret_name = f"{self.name}-env" if self.target.secret_env else None
        manifest = build_pytorchjob(
            self.target.pytorchjob,
            self.job,
            name=self.name,
            secret_env_name=secret_name,
            secret_env_keys=tuple(self.target.secret_env),
            owner=await self._flow_owner(),
            pending_allowance_s=self.target.pending_deadline_s,
        )
        await self._validate(manifest)
        if secret_name is not None:
            await self._create_secret(secret_name)
        self.submitted = True  # from here on, a failure or cancellation deletes the job
        try:
            created = await self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, manifest, field_validation="Strict"
            )
        except ApiException as error:
            if secret_name is not None:
                await self._delete_secret(secret_name)
            raise _api_error(f"creating PyTorchJob {self.namespace}/{self.name}", error) from None
        if secret_name is not None:
            await self._own_secret(secret_name, created["metadata"]["uid"])
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
                raise _api_error(f"reading CRD {CRD_NAME}", error) from None
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

    async def _create_secret(self, secret_name: str) -> None:
        body = V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=V1ObjectMeta(
                name=secret_name,
                namespace=self.namespace,
                labels={JOB_LABEL: label_value(self.job.name)},
            ),
            type="Opaque",
            string_data={
                key: value.get_secret_value() for key, value in self.target.secret_env.items()
            },
        )
        try:
            await self.core.create_namespaced_secret(self.namespace, body)
        except ApiException as error:
            # Not _api_error: the server's reply may quote what we sent, values included.
            raise JobStartError(
                f"creating Secret {self.namespace}/{secret_name} failed: HTTP {error.status} "
                f"{error.reason}",
                retryable=error.status is None or error.status >= 500 or error.status == 429,
            ) from None

    async def _own_secret(self, secret_name: str, job_uid: str) -> None:
        """Hand the Secret to the job, so the job's deletion (or TTL) removes it too."""
        owner = OwnerReference(api_version=API_VERSION, kind=KIND, name=self.name, uid=job_uid)
        patch = {"metadata": {"ownerReferences": [owner.manifest()]}}
        try:
            await self.core.patch_namespaced_secret(secret_name, self.namespace, patch)
        except ApiException as error:
            self.log.warning("Could not hand Secret %s to its job: %s", secret_name, error.reason)

    async def _delete_secret(self, secret_name: str) -> None:
        with contextlib.suppress(ApiException):
            await self.core.delete_namespaced_secret(secret_name, self.namespace)

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
            status = await self._next_status(status, settings.poll_interval_s)
            if status.phase != previous:
                self.log.info(
                    "PyTorchJob %s: %s%s",
                    self.name,
                    status.phase.value,
                    f" ({status.reason}: {status.message})" if status.reason else "",
                )
            self._raise_follower_failure()
            pods = await self._pods()
            self._follow_logs(pods)
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
        await self._finish_logs()
        return await self._exit_code(status)

    async def _next_status(self, current: JobStatus, wait_s: float) -> JobStatus:
        """The newest status the watcher reported, waiting up to ``wait_s`` for one."""
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

    async def _watch_job(self) -> None:
        """Feed ``statuses`` from the watch API, resuming at the last resourceVersion."""
        try:
            version = await self._poll_job()
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
                            timeout_seconds=self.target.watch_timeout_s,
                            allow_watch_bookmarks=True,
                            # A half-open connection must not hang us: the server ends the
                            # watch by timeout_seconds, so a longer silence is a dead link.
                            _request_timeout=aiohttp.ClientTimeout(
                                sock_read=self.target.watch_timeout_s + _WATCH_SILENCE_MARGIN_S
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
                    version = await self._poll_job()
                    continue
                except (aiohttp.ClientError, TimeoutError) as error:
                    self.log.warning(
                        "Watch of %s dropped (%s): resuming at resourceVersion %s",
                        self.name,
                        type(error).__name__,
                        version,
                    )
                    failures += 1
                    await asyncio.sleep(self.target.poll_interval_s)
                    continue
                short = time.monotonic() - opened < _SHORT_WATCH_S
                failures = failures + 1 if (events == 0 and short) else 0
            self.log.warning("Watching %s keeps failing: polling it instead", self.name)
            while True:
                await asyncio.sleep(self.target.poll_interval_s)
                await self._poll_job()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            await self.statuses.put(error)

    async def _poll_job(self) -> str:
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
            raise _api_error(f"reading PyTorchJob {self.name}", error) from None
        status = job_status(obj)
        await self.statuses.put(status)
        return status.resource_version

    async def _pods(self) -> list[Any]:
        """The job's pods; an API hiccup reuses the last answer (a bounded number of times):
        a long job must not die of one failed list call."""
        try:
            listed = await self.core.list_namespaced_pod(
                self.namespace, label_selector=f"{OPERATOR_JOB_LABEL}={self.name}"
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            if not _transient(error):
                raise
            self.pod_list_failures += 1
            if self.pod_list_failures > _API_FAILURES_TOLERATED:
                raise JobStartError(
                    f"listing the pods of PyTorchJob {self.name} failed "
                    f"{self.pod_list_failures} times in a row: {error}",
                    retryable=True,
                ) from None
            self.log.warning("Listing pods of %s failed (%s): trying again", self.name, error)
            return self.last_pods
        self.pod_list_failures = 0
        self.last_pods = list(listed.items)
        return self.last_pods

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

    # ---- logs -----------------------------------------------------------------------

    def _follow_logs(self, pods: list[Any]) -> None:
        for pod in pods:
            # By uid: a restarted replica comes back under the same pod name.
            uid, name = pod.metadata.uid, pod.metadata.name
            if uid in self.followers or not container_started(pod, CONTAINER_NAME):
                continue
            is_master = (pod.metadata.labels or {}).get(OPERATOR_ROLE_LABEL, "").lower() == "master"
            task = asyncio.create_task(self._follow_log(name, is_master), name=f"log {name}")
            self.followers[uid] = task

    async def _follow_log(self, pod: str, is_master: bool) -> None:
        """Copy a pod's log to the workspace (and the Master's to ``on_line``), resuming
        after a dropped connection without repeating lines."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        last_stamp: tuple[str, int] | None = None
        last_seen = time.time()
        failures = 0
        with (self.log_dir / f"{pod}.log").open("a", encoding="utf-8") as copy:
            while True:
                # After a drop, resume a little before the last line; duplicates are skipped.
                resume: dict[str, Any] = {}
                if last_stamp:
                    resume["since_seconds"] = int(time.time() - last_seen) + 2
                try:
                    response = cast(
                        aiohttp.ClientResponse,
                        await self.core.read_namespaced_pod_log(
                            pod,
                            self.namespace,
                            container=CONTAINER_NAME,
                            follow=True,
                            timestamps=True,
                            _preload_content=False,
                            # Reconnect after a long silence, in case the link died quietly.
                            _request_timeout=aiohttp.ClientTimeout(sock_read=_LOG_SILENCE_S),
                            **resume,
                        ),
                    )
                except (ApiException, aiohttp.ClientError, TimeoutError) as error:
                    if isinstance(error, ApiException) and error.status in (400, 404):
                        return  # pod gone, or its container never started
                    if not _transient(error):
                        raise
                    failures += 1
                    if failures > _API_FAILURES_TOLERATED:
                        # The job goes on; only this copy of its log stops here.
                        self.log.warning("Giving up on the log of %s: %s", pod, error)
                        return
                    await asyncio.sleep(min(1.0, self.target.poll_interval_s))
                    continue
                failures = 0
                try:
                    async for raw in response.content:
                        stamp_text, _, text = (
                            raw.decode("utf-8", errors="replace").rstrip("\r\n").partition(" ")
                        )
                        stamp = _parse_stamp(stamp_text)
                        if last_stamp is not None and stamp <= last_stamp:
                            continue  # already copied before the reconnect
                        last_stamp, last_seen = stamp, time.time()
                        copy.write(text + "\n")
                        copy.flush()
                        if is_master:
                            self.tail.append(text)
                            await self.on_line(text)
                except (aiohttp.ClientError, TimeoutError) as error:
                    self.log.info("Log stream of %s dropped (%s): resuming", pod, error)
                finally:
                    response.release()
                if await self._container_done(pod):
                    return
                await asyncio.sleep(min(1.0, self.target.poll_interval_s))

    async def _container_done(self, pod: str) -> bool:
        try:
            current = await self.core.read_namespaced_pod(pod, self.namespace)
        except ApiException:
            return True
        return container_exit(current, CONTAINER_NAME) is not None

    def _raise_follower_failure(self) -> None:
        """Surface an error of a log stream (``on_line`` raising, the API refusing)."""
        for task in self.followers.values():
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def _finish_logs(self) -> None:
        """Let the log streams of finished containers reach their end; the copies of pods
        still running (the operator stops them after a failure) end where they are."""
        pods = await self._pods()
        self._follow_logs(pods)
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
            _, late = await asyncio.wait(draining, timeout=self.target.log_drain_s)
            for task in late:
                task.cancel()
        self._raise_follower_failure()

    async def _exit_code(self, status: JobStatus) -> int:
        """The Master's exit code, else the first failing worker's, in DESIGN.md classes."""
        pods = await self._pods()
        pods.sort(key=lambda pod: (pod.metadata.labels or {}).get(OPERATOR_ROLE_LABEL) != "master")
        for pod in pods:
            ended = container_exit(pod, CONTAINER_NAME)
            if ended is None:
                continue
            code, reason = ended
            if code != 0 or status.phase == JobPhase.SUCCEEDED:
                if code != 0:
                    self.tail.append(f"gpuflow: pod {pod.metadata.name} exited {code} {reason}")
                return exit_class_code(code, reason, pod.status.reason or "")
        if status.phase == JobPhase.SUCCEEDED:
            return int(ExitCode.SUCCESS)
        # Failed with no container exit to show (deadline exceeded, pods evicted and gone).
        self.tail.append(f"gpuflow: PyTorchJob failed: {status.reason}: {status.message}")
        return int(ExitCode.RESOURCE_ERROR)


def _parse_stamp(text: str) -> tuple[str, int]:
    """An RFC3339Nano timestamp as a comparable (seconds part, nanoseconds) pair."""
    seconds, _, rest = text.rstrip("Z").partition(".")
    return seconds, int(rest.ljust(9, "0")[:9]) if rest.isdigit() else 0


def _transient(error: BaseException) -> bool:
    """Errors worth another try: server-side trouble, throttling, a broken connection."""
    if isinstance(error, ApiException):
        return error.status is None or error.status >= 500 or error.status == 429
    return True


def _api_error(action: str, error: ApiException) -> Exception:
    """An API failure with the server's own message; 4xx are the configuration's fault."""
    body = error.body.decode("utf-8", "replace") if isinstance(error.body, bytes) else error.body
    message = f"{action} failed: HTTP {error.status} {error.reason}: {body or ''}".rstrip()
    if error.status is not None and 400 <= error.status < 500 and error.status not in (409, 429):
        return ManifestError(message)
    return JobStartError(message, retryable=True)
