"""A Kubernetes API server for tests: the REST protocol for what the PyTorchJob backend uses.

It listens on 127.0.0.1 (a free port) and serves, like kube-apiserver 1.33 does (its
generic checks and semantics are in ``kube_semantics.py``, modeled on that release and
independent of the code under test):

- a bearer token on every request (401 without it), then RBAC when ``access`` holds the
  caller's Roles (``kube_rbac.py``: 403 Forbidden for a verb or resource not granted);
- ``kubeflow.org/v1`` pytorchjobs: create (names and ``generateName``, the CRD's
  openAPIV3Schema with structural pruning, ``fieldValidation``, 409 for a duplicate),
  get, list, watch (chunked JSON lines from a ``resourceVersion``, ``410 Gone`` for
  compacted ones, the current state first when no ``resourceVersion`` is given),
  patch (merge or JSON patch), delete by ``propagationPolicy`` with the garbage
  collector's part (dependents by ``ownerReferences``);
- core pods (list and watch by label selector, get, ``/log`` with ``follow``/``timestamps``/
  ``sinceSeconds``), events (by ``involvedObject.name``), secrets (create/patch/delete,
  checked by Kubernetes 1.33's schemas, ``stringData`` written into ``data``);
- the PyTorchJob CRD under ``apiextensions.k8s.io/v1`` (the copy in tests/support/schemas).

It runs no operator: each test scripts the operator's part (pods, conditions, logs,
exit codes) with the helper methods, in the same event loop as the code under test.
Two pieces of the operator are built in, because the code must survive them on every
release: how training-operator before v1.9.4 ends a failed job (see
``operator_deletes_failed_pods`` and ``set_condition``), and ``runPolicy.suspend``
(v1.7.0 and later): a job created suspended gets no pods (no script) until resumed.
Faults are scripted too: dropped watch and log connections, compacted history.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.support.kube_rbac import RoleBasedAccess, request_attributes
from tests.support.kube_semantics import (
    ApiRejection,
    CustomResourceSchema,
    admit_core,
    admit_metadata,
    apply_custom_resource_patch,
    apply_patch,
    authenticate,
    field_validation,
    watch_starts_with_current_state,
    write_secret,
)

JobScript = Callable[["KubeApiServer", dict[str, Any]], Coroutine[Any, Any, None]]

_JOBS = "/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"
_JOB_API_VERSION = "kubeflow.org/v1"
_JOB_KIND = "PyTorchJob"
TOKEN = "test-token"
_CORE = "/api/v1/namespaces/{namespace}"


@dataclass
class _PodLog:
    lines: list[str] = field(default_factory=list)  # "<RFC3339Nano> <text>"
    closed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any


_BODY = web.RequestKey("json", object)


def _body(request: web.Request) -> Any:
    return request[_BODY]


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(ApiRejection(code, reason, message).status(), status=code)


def _with_warnings(response: web.Response, warnings: list[str]) -> web.Response:
    for warning in warnings:  # one RFC 7234 Warning header each, code 299, as the server
        response.headers.add("Warning", f"299 - {json.dumps(warning)}")
    return response


def _selector_matches(selector: str, values: dict[str, str]) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, wanted = term.partition("=")
        if values.get(key) != wanted:
            return False
    return True


class KubeApiServer:
    def __init__(self, crd: dict[str, Any] | None) -> None:
        self.crd = crd
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.logs: dict[tuple[str, str], _PodLog] = {}
        self.requests: list[RecordedRequest] = []
        self.request_arrived = asyncio.Event()
        self.script: JobScript | None = None
        self.script_tasks: list[asyncio.Task[None]] = []
        # (resourceVersion, event type, job snapshot) of every job change, oldest first.
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.compacted_below = 0
        self.watch_changed = asyncio.Event()
        self.job_watched = asyncio.Event()  # set once a job watch is streaming
        # (resourceVersion, event type, pod snapshot) of every pod change, oldest first.
        self.pod_history: list[tuple[int, str, dict[str, Any]]] = []
        self.pods_changed = asyncio.Event()
        self.operator_deletes_failed_pods = True
        self.drop_watches = 0  # abort this many watch connections after their first event
        self.watch_failures = 0  # answer this many watch requests with a broken connection
        self.drop_logs_after: dict[str, int] = {}  # pod -> abort its log stream after n lines
        self.failing_reads = 0  # answer this many pod lists and log reads with 500
        self.crd_forbidden = False  # the caller's RBAC does not allow reading CRDs
        # The caller's Roles: every request is authorized against them (403 otherwise);
        # None, the caller is a cluster admin.
        self.access: RoleBasedAccess | None = None
        self.token = TOKEN
        self.garbage_collection: list[asyncio.Task[None]] = []
        # Cleared, the garbage collector waits (a busy controller): a test can then see
        # what an owner being deleted looks like before its dependents are gone.
        self.collector_running = asyncio.Event()
        self.collector_running.set()
        self.version = 100
        self.stopping = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.middlewares.append(self._record)
        app.middlewares.append(self._authenticate)
        app.router.add_route("*", _JOBS, self._jobs)
        app.router.add_route("*", _JOBS + "/{name}", self._job)
        app.router.add_get(_CORE + "/pods", self._list_pods)
        app.router.add_get(_CORE + "/pods/{name}", self._get_pod)
        app.router.add_get(_CORE + "/pods/{name}/log", self._pod_log)
        app.router.add_get(_CORE + "/events", self._list_events)
        app.router.add_post(_CORE + "/secrets", self._create_secret)
        app.router.add_route("*", _CORE + "/secrets/{name}", self._secret)
        app.router.add_get(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", self._get_crd
        )
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.05)
        await self._runner.setup()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()

    async def stop(self) -> None:
        for task in self.script_tasks:
            task.cancel()
        await asyncio.gather(*self.script_tasks, return_exceptions=True)
        for log in self.logs.values():
            log.closed = True
            log.changed.set()
        self.stopping = True
        self.watch_changed.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "test", "namespace": namespace},
                }
            ],
            "current-context": "test",
        }

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            body = json.loads(text) if text else None
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), body)
        )
        request[_BODY] = body
        self.request_arrived.set()
        self.request_arrived = asyncio.Event()
        return await handler(request)

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The bearer token first, then RBAC; any refusal a handler raises becomes its
        ``Status``."""
        try:
            authenticate(request.headers.get("Authorization"), self.token)
            if self.access is not None:
                self.access.authorize(
                    request_attributes(request.method, request.path, request.query)
                )
            return await handler(request)
        except ApiRejection as rejection:
            return web.json_response(rejection.status(), status=rejection.code)

    # ---- pytorchjobs ----------------------------------------------------------------

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        if self.crd is None:  # no CRD installed: the API server does not serve the group
            return _status(404, "NotFound", "the server could not find the requested resource")
        if request.method == "POST":
            return self._create_job(namespace, request)
        if request.method != "GET":
            return _status(405, "MethodNotAllowed", request.method)
        if _flag(request.query.get("watch")):
            return await self._watch_jobs(namespace, request)
        selector = request.query.get("fieldSelector", "")
        items = [
            job
            for (ns, name), job in self.jobs.items()
            if ns == namespace and _selector_matches(selector, {"metadata.name": name})
        ]
        return web.json_response(
            {
                "apiVersion": "kubeflow.org/v1",
                "kind": "PyTorchJobList",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    def _create_job(self, namespace: str, request: web.Request) -> web.Response:
        assert self.crd is not None
        directive = field_validation(request.query)
        job = copy.deepcopy(_body(request))
        name = admit_metadata(_JOB_KIND, job, namespace)
        job, warnings = CustomResourceSchema.of(self.crd, "v1").admit(job, directive)
        if (namespace, name) in self.jobs:
            return _status(
                409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists'
            )
        job["metadata"].update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            resourceVersion=self._next_version(),
            generation=1,
        )
        self.jobs[(namespace, name)] = job
        self._job_changed("ADDED", job)
        if _suspended(job):
            self.set_condition(job, "Suspended", message=f"PyTorchJob {name} is suspended.")
        else:
            self._operator_starts(job)
        return _with_warnings(web.json_response(job, status=201), warnings)

    def _operator_starts(self, job: dict[str, Any]) -> None:
        """The operator makes the job's pods (the test's script) once it is not suspended."""
        if self.script is not None:
            self.script_tasks.append(asyncio.create_task(self.script(self, copy.deepcopy(job))))

    async def _job(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        job = self.jobs.get(key)
        if job is None:
            return _status(404, "NotFound", f'pytorchjobs.kubeflow.org "{key[1]}" not found')
        if request.method == "GET":
            return web.json_response(job)
        if request.method == "DELETE":
            return self._delete_job(key, _propagation_policy(request))
        if request.method == "PATCH":
            return self._patch_job(key, request)
        return _status(405, "MethodNotAllowed", request.method)

    def _patch_job(self, key: tuple[str, str], request: web.Request) -> web.Response:
        """A patch of a custom resource: JSON or merge patch (no strategic merge patch for
        custom resources), checked against the CRD like a create. Resuming a suspended job
        (``runPolicy.suspend`` true to false) is the operator's cue, as in training-operator
        v1.7.0 and later (kubeflow/trainer#1859): it marks the job resumed (condition
        Suspended False, reason PyTorchJobResumed) and creates the pods."""
        assert self.crd is not None
        directive = field_validation(request.query)
        stored = self.jobs[key]
        patched = apply_custom_resource_patch(stored, _body(request), request.content_type)
        identity = {k: stored["metadata"][k] for k in ("name", "namespace", "uid")}
        patched["metadata"].update(identity)
        patched.pop("status", None)  # the status subresource: a patch of the job keeps it
        patched, warnings = CustomResourceSchema.of(self.crd, "v1").admit(patched, directive)
        if "status" in stored:
            patched["status"] = stored["status"]
        if patched["spec"] != stored["spec"]:
            patched["metadata"]["generation"] = stored["metadata"]["generation"] + 1
        patched["metadata"]["resourceVersion"] = self._next_version()
        self.jobs[key] = patched
        self._job_changed("MODIFIED", patched)
        if _suspended(stored) and not _suspended(patched):
            self._operator_resumes(patched)
        return _with_warnings(web.json_response(patched), warnings)

    def _operator_resumes(self, job: dict[str, Any]) -> None:
        for condition in job.get("status", {}).get("conditions", []):
            if condition["type"] == "Suspended":
                condition.update(
                    status="False",
                    reason="PyTorchJobResumed",
                    message=f"PyTorchJob {job['metadata']['name']} is resumed.",
                    lastTransitionTime=_now(),
                )
        job["metadata"]["resourceVersion"] = self._next_version()
        self._job_changed("MODIFIED", job)
        self._operator_starts(job)

    def kueue_admits(self, name: str, namespace: str = "default") -> None:
        """Kueue admits the job's workload: it unsuspends the job (Kueue's own update)."""
        job = self.jobs[(namespace, name)]
        job["spec"]["runPolicy"]["suspend"] = False
        job["metadata"]["generation"] += 1
        self._operator_resumes(job)

    # ---- deletion and the garbage collector (generic semantics, Kubernetes 1.33) ------

    def _delete_job(self, key: tuple[str, str], policy: str) -> web.Response:
        """Cascading deletion as documented ("Use cascading deletion in a cluster"):
        Background (the default for custom resources) removes the job now and its
        dependents after; Orphan removes it and leaves its dependents, without the owner
        reference; Foreground marks it (``deletionTimestamp``, the ``foregroundDeletion``
        finalizer) and removes it only once the dependents that block it are gone."""
        job = self.jobs[key]
        metadata = job["metadata"]
        if metadata.get("deletionTimestamp"):
            return web.json_response(job)  # already being deleted: nothing changes
        if policy == "Foreground":
            metadata["deletionTimestamp"] = _now()[:19] + "Z"
            metadata["deletionGracePeriodSeconds"] = 0
            metadata["finalizers"] = [*metadata.get("finalizers", []), "foregroundDeletion"]
            metadata["resourceVersion"] = self._next_version()
            self._job_changed("MODIFIED", job)
            self._collect(self._foreground_deletion(key, metadata["uid"]))
            return web.json_response(job)
        self._remove_job(key)
        if policy == "Orphan":
            self._orphan_dependents(metadata["uid"])
        else:
            self._collect(self._delete_dependents(metadata["uid"]))
        return web.json_response(job)

    def _remove_job(self, key: tuple[str, str]) -> None:
        job = self.jobs.pop(key)
        job["metadata"]["resourceVersion"] = self._next_version()
        self._job_changed("DELETED", job)

    def _collect(self, work: Coroutine[Any, Any, None]) -> None:
        """The garbage collector works apart from the request, as the controller does."""
        self.garbage_collection.append(asyncio.create_task(work))

    async def garbage_collected(self) -> None:
        """Wait until the garbage collector has done what deletions so far asked of it."""
        while pending := [task for task in self.garbage_collection if not task.done()]:
            await asyncio.gather(*pending)

    def _dependents(self, owner_uid: str) -> list[tuple[str, tuple[str, str]]]:
        stores = {"pod": self.pods, "secret": self.secrets}
        return [
            (kind, key)
            for kind, store in stores.items()
            for key, obj in store.items()
            if any(ref.get("uid") == owner_uid for ref in _owner_references(obj))
        ]

    async def _delete_dependents(self, owner_uid: str) -> None:
        await asyncio.sleep(0)  # after the owner's deletion was answered
        await self.collector_running.wait()
        for kind, key in self._dependents(owner_uid):
            self._remove_dependent(kind, key)

    async def _foreground_deletion(self, key: tuple[str, str], owner_uid: str) -> None:
        await self._delete_dependents(owner_uid)
        if key in self.jobs:
            self._remove_job(key)

    def _remove_dependent(self, kind: str, key: tuple[str, str]) -> None:
        if kind == "secret":
            self.secrets.pop(key, None)
            return
        if key in self.pods:
            self._delete_pod(key)  # pod watchers see it go, as from the real garbage collector

    def _orphan_dependents(self, owner_uid: str) -> None:
        for kind, key in self._dependents(owner_uid):
            obj = (self.pods if kind == "pod" else self.secrets)[key]
            obj["metadata"]["ownerReferences"] = [
                ref for ref in _owner_references(obj) if ref.get("uid") != owner_uid
            ]

    def _job_changed(self, kind: str, job: dict[str, Any]) -> None:
        self.history.append((int(job["metadata"]["resourceVersion"]), kind, copy.deepcopy(job)))
        self.watch_changed.set()
        self.watch_changed = asyncio.Event()

    async def _watch_jobs(self, namespace: str, request: web.Request) -> web.StreamResponse:
        requested = request.query.get("resourceVersion")
        from_current_state = watch_starts_with_current_state(requested)
        since = self.version if from_current_state else int(str(requested))
        selector = request.query.get("fieldSelector", "")
        deadline = asyncio.get_running_loop().time() + float(
            request.query.get("timeoutSeconds", "300")
        )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self.watch_failures:
            self.watch_failures -= 1
            assert request.transport is not None
            request.transport.abort()
            return response
        if since and since < self.compacted_below:
            gone = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"too old resource version: {since} ({self.compacted_below})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        self.job_watched.set()
        sent = since
        if from_current_state:
            for (ns, name), job in list(self.jobs.items()):
                if ns == namespace and _selector_matches(selector, {"metadata.name": name}):
                    line = json.dumps({"type": "ADDED", "object": job}).encode() + b"\n"
                    await response.write(line)
        while True:
            changed = self.watch_changed
            for version, kind, job in list(self.history):
                if version <= sent:
                    continue
                sent = version
                if job["metadata"]["namespace"] != namespace or not _selector_matches(
                    selector, {"metadata.name": job["metadata"]["name"]}
                ):
                    continue
                line = json.dumps({"type": kind, "object": job}).encode() + b"\n"
                await response.write(line)
                if self.drop_watches:
                    self.drop_watches -= 1
                    assert request.transport is not None
                    request.transport.abort()
                    return response
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.stopping:
                return response
            try:
                await asyncio.wait_for(changed.wait(), timeout=remaining)
            except TimeoutError:
                return response

    # ---- pods, logs, events, secrets -------------------------------------------------

    @staticmethod
    def _pod_of(pod: dict[str, Any], job: str) -> bool:
        return bool(pod["metadata"]["labels"].get("training.kubeflow.org/job-name") == job)

    def _fail_read(self) -> web.Response | None:
        if not self.failing_reads:
            return None
        self.failing_reads -= 1
        return _status(500, "InternalError", "etcdserver: request timed out")

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        selector = request.query.get("labelSelector", "")
        if _flag(request.query.get("watch")):
            return await self._watch_pods(namespace, selector, request)
        if (failure := self._fail_read()) is not None:
            return failure
        items = [
            pod
            for (ns, _), pod in self.pods.items()
            if ns == namespace and _selector_matches(selector, pod["metadata"]["labels"])
        ]
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    def _pod_changed(self, kind: str, pod: dict[str, Any]) -> None:
        pod["metadata"]["resourceVersion"] = self._next_version()
        self.pod_history.append((int(pod["metadata"]["resourceVersion"]), kind, copy.deepcopy(pod)))
        self.pods_changed.set()
        self.pods_changed = asyncio.Event()

    def _delete_pod(self, key: tuple[str, str]) -> None:
        """As kube-apiserver: the pod's last state goes out with its DELETED event."""
        pod = self.pods.pop(key)
        pod["metadata"]["deletionTimestamp"] = _now()[:19] + "Z"
        self._pod_changed("DELETED", pod)
        self.logs[key].closed = True
        self.logs[key].changed.set()

    async def _watch_pods(
        self, namespace: str, selector: str, request: web.Request
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        deadline = asyncio.get_running_loop().time() + float(
            request.query.get("timeoutSeconds", "300")
        )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since and since < self.compacted_below:
            gone = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"too old resource version: {since} ({self.compacted_below})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        sent = since
        while True:
            changed = self.pods_changed
            for version, kind, pod in list(self.pod_history):
                if version <= sent:
                    continue
                sent = version
                if pod["metadata"]["namespace"] != namespace or not _selector_matches(
                    selector, pod["metadata"]["labels"]
                ):
                    continue
                try:
                    await response.write(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
                except ConnectionResetError:
                    return response
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.stopping:
                return response
            try:
                await asyncio.wait_for(changed.wait(), timeout=remaining)
            except TimeoutError:
                return response

    async def _get_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.pods:
            return _status(404, "NotFound", f'pods "{key[1]}" not found')
        return web.json_response(self.pods[key])

    async def _pod_log(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.pods:
            return _status(404, "NotFound", f'pods "{key[1]}" not found')
        if (failure := self._fail_read()) is not None:
            return failure
        log = self.logs[key]
        if not log.lines and not log.closed and not self._container_started(key):
            return _status(400, "BadRequest", f'container "pytorch" in pod "{key[1]}" is waiting')
        follow = _flag(request.query.get("follow"))
        stamps = _flag(request.query.get("timestamps"))
        since_s = request.query.get("sinceSeconds")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        position = 0
        if since_s is not None:
            cutoff = datetime.now(UTC).timestamp() - int(since_s)
            position = next(
                (i for i, line in enumerate(log.lines) if _stamp_seconds(line) >= cutoff),
                len(log.lines),
            )
        written = 0
        while True:
            changed = log.changed
            while position < len(log.lines):
                line = log.lines[position]
                position += 1
                text = line if stamps else line.partition(" ")[2]
                try:
                    await response.write(text.encode() + b"\n")
                except ConnectionResetError:
                    return response  # the client went away, as clients may
                written += 1
                if self.drop_logs_after.get(key[1]) == written:
                    del self.drop_logs_after[key[1]]
                    assert request.transport is not None
                    request.transport.abort()
                    return response
            if not follow or log.closed:
                return response
            await changed.wait()

    def _container_started(self, key: tuple[str, str]) -> bool:
        statuses = self.pods[key].get("status", {}).get("containerStatuses", [])
        return any("running" in s["state"] or "terminated" in s["state"] for s in statuses)

    async def _list_events(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        selector = request.query.get("fieldSelector", "")
        items = [
            event
            for event in self.events
            if event["metadata"]["namespace"] == namespace
            and _selector_matches(
                selector, {"involvedObject.name": event["involvedObject"]["name"]}
            )
        ]
        return web.json_response(
            {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}
        )

    async def _create_secret(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        directive = field_validation(request.query)
        secret = copy.deepcopy(_body(request))
        name = admit_metadata("Secret", secret, namespace)
        warnings = admit_core(secret, directive)
        if (namespace, name) in self.secrets:
            return _status(409, "AlreadyExists", f'secrets "{name}" already exists')
        secret = write_secret(secret)
        secret["metadata"].update(
            uid=str(uuid.uuid4()), resourceVersion=self._next_version(), creationTimestamp=_now()
        )
        self.secrets[(namespace, name)] = secret
        return _with_warnings(web.json_response(secret, status=201), warnings)

    async def _secret(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.secrets:
            return _status(404, "NotFound", f'secrets "{key[1]}" not found')
        if request.method == "PATCH":
            return self._patch_secret(key, request)
        if request.method == "DELETE":
            secret = self.secrets.pop(key)
            details = {"name": key[1], "kind": "secrets", "uid": secret["metadata"]["uid"]}
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": details}
            )
        return web.json_response(self.secrets[key])

    def _patch_secret(self, key: tuple[str, str], request: web.Request) -> web.Response:
        directive = field_validation(request.query)
        stored = self.secrets[key]
        patched = apply_patch(stored, _body(request), request.content_type)
        identity = {k: stored["metadata"][k] for k in ("name", "namespace", "uid")}
        patched["metadata"].update(identity)  # a patch cannot rename or move an object
        warnings = admit_core(patched, directive)
        patched = write_secret(patched)
        patched["metadata"]["resourceVersion"] = self._next_version()
        self.secrets[key] = patched
        return _with_warnings(web.json_response(patched), warnings)

    async def _get_crd(self, request: web.Request) -> web.Response:
        if self.crd_forbidden:
            return _status(403, "Forbidden", "cannot get customresourcedefinitions")
        if self.crd is None or request.match_info["name"] != self.crd["metadata"]["name"]:
            name = request.match_info["name"]
            return _status(404, "NotFound", f'customresourcedefinitions "{name}" not found')
        return web.json_response(self.crd)

    # ---- the operator's part, scripted by tests ----------------------------------------

    def job(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.jobs[(namespace, name)]

    def set_condition(
        self, job: dict[str, Any], kind: str, reason: str = "", message: str = ""
    ) -> None:
        """Append a True condition to the job (the operator's status update).

        With ``operator_deletes_failed_pods`` (the default), Failed is written the way
        training-operator v1.9.3 and older write it: the job's pods are deleted first,
        whatever ``cleanPodPolicy`` says (kubeflow/trainer#3419, fixed in v1.9.4 by #3420;
        modeled on v1.9.3's pkg/controller.v1/common/job.go, whose ``jobExceedsLimit``
        branch deletes the pods and services, then updates the status). A client that
        lists pods only after seeing Failed finds none."""
        current = self.jobs.get((job["metadata"]["namespace"], job["metadata"]["name"]))
        if current is None:
            return
        if kind == "Failed" and self.operator_deletes_failed_pods:
            name = current["metadata"]["name"]
            for pod_key in [k for k, pod in self.pods.items() if self._pod_of(pod, name)]:
                self._delete_pod(pod_key)
        conditions = current.setdefault("status", {}).setdefault("conditions", [])
        for condition in conditions:
            if condition["type"] in ("Running", "Restarting") and kind != condition["type"]:
                condition["status"] = "False"
        conditions.append(
            {
                "type": kind,
                "status": "True",
                "reason": reason or f"PyTorchJob{kind}",
                "message": message or f"PyTorchJob {job['metadata']['name']} is {kind.lower()}.",
                "lastTransitionTime": _now(),
                "lastUpdateTime": _now(),
            }
        )
        current["metadata"]["resourceVersion"] = self._next_version()
        self._job_changed("MODIFIED", current)

    def compact(self) -> None:
        """Forget the watch history so far (etcd compaction): older versions get 410."""
        self.compacted_below = self.version + 1

    def create_pods(self, job: dict[str, Any]) -> list[str]:
        """One pending pod per replica, from the job's templates, as the operator makes them."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        created = []
        for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
            for index in range(replica.get("replicas", 1)):
                pod_name = f"{name}-{role.lower()}-{index}"
                template = copy.deepcopy(replica["template"])
                labels = {
                    **template["metadata"].get("labels", {}),
                    "training.kubeflow.org/job-name": name,
                    "training.kubeflow.org/replica-type": role.lower(),
                    "training.kubeflow.org/replica-index": str(index),
                }
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        **template["metadata"],
                        "name": pod_name,
                        "namespace": namespace,
                        "labels": labels,
                        "uid": str(uuid.uuid4()),
                        # The operator's pods are its job's controlled dependents.
                        "ownerReferences": [
                            {
                                "apiVersion": _JOB_API_VERSION,
                                "kind": _JOB_KIND,
                                "name": name,
                                "uid": job["metadata"]["uid"],
                                "controller": True,
                                "blockOwnerDeletion": True,
                            }
                        ],
                    },
                    "spec": template["spec"],
                    "status": {"phase": "Pending", "conditions": []},
                }
                self.pods[(namespace, pod_name)] = pod
                self.logs[(namespace, pod_name)] = _PodLog()
                self._pod_changed("ADDED", pod)
                created.append(pod_name)
        return created

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.pods[(namespace, name)]

    def unschedulable(self, pod: str, message: str) -> None:
        self.pod(pod)["status"]["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
        ]
        self._pod_changed("MODIFIED", self.pod(pod))
        self.add_event(pod, "FailedScheduling", message)

    def waiting(self, pod: str, reason: str, message: str, image: str = "img") -> None:
        self._container(pod, image, {"waiting": {"reason": reason, "message": message}})

    def running(self, pod: str, image: str = "img") -> None:
        self.pod(pod)["status"]["phase"] = "Running"
        self._container(pod, image, {"running": {"startedAt": _now()[:19] + "Z"}})

    def terminate(self, pod: str, exit_code: int, reason: str = "", image: str = "img") -> None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "finishedAt": _now()[:19] + "Z",
            }
        }
        self.pod(pod)["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        self._container(pod, image, state)
        log = self.logs[("default", pod)]
        log.closed = True
        log.changed.set()

    def _container(self, pod: str, image: str, state: dict[str, Any]) -> None:
        self.pod(pod)["status"]["containerStatuses"] = [
            {
                "name": "pytorch",
                "image": image,
                "imageID": "",
                "ready": "running" in state,
                "restartCount": 0,
                "state": state,
            }
        ]
        self._pod_changed("MODIFIED", self.pod(pod))

    def log(self, pod: str, text: str) -> None:
        log = self.logs[("default", pod)]
        log.lines.append(f"{_now()} {text}")
        log.changed.set()
        log.changed = asyncio.Event()

    def add_event(self, pod: str, reason: str, message: str, kind: str = "Warning") -> None:
        self.events.append(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:8]}", "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": "default"},
                "reason": reason,
                "message": message,
                "type": kind,
            }
        )

    def requests_to(self, method: str, path_part: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    async def request_made(self, method: str, path_part: str, **query: str) -> None:
        """Until the client has sent such a request (how a script waits for the client)."""
        while not any(
            all(r.query.get(key) == value for key, value in query.items())
            for r in self.requests_to(method, path_part)
        ):
            await self.request_arrived.wait()


def _propagation_policy(request: web.Request) -> str:
    """``propagationPolicy`` from the query or the DeleteOptions body; Background when
    neither names one (custom resources and secrets default to it)."""
    body = _body(request)
    policy = request.query.get("propagationPolicy") or (
        body.get("propagationPolicy") if isinstance(body, dict) else None
    )
    if policy is None:
        return "Background"
    if policy not in ("Foreground", "Background", "Orphan"):
        raise ApiRejection(
            422,
            "Invalid",
            f'DeleteOptions.propagationPolicy: Unsupported value: "{policy}": supported values: '
            '"Foreground", "Background", "Orphan"',
        )
    return str(policy)


def _suspended(job: dict[str, Any]) -> bool:
    return bool(job["spec"].get("runPolicy", {}).get("suspend", False))


def _owner_references(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj.get("metadata", {}).get("ownerReferences") or [])


def _stamp_seconds(line: str) -> float:
    stamp = line.partition(" ")[0]
    return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


async def run_containers_locally(api: KubeApiServer, job: dict[str, Any]) -> None:
    """A job script that plays kubelet: each Master's container command runs as a local
    process (the NAS is a local directory here), its output becomes the pod's log and its
    exit code the container's. For whole-flow tests."""
    pods = api.create_pods(job)
    api.set_condition(job, "Created")
    for pod in pods:
        api.running(pod)
    api.set_condition(job, "Running")
    codes = await asyncio.gather(*(_run_container(api, pod) for pod in pods))
    failed = any(codes)
    api.set_condition(job, "Failed" if failed else "Succeeded")


async def _run_container(api: KubeApiServer, pod: str) -> int:
    (container,) = api.pod(pod)["spec"]["containers"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({var["name"]: var["value"] for var in container["env"] if "value" in var})
    process = await asyncio.create_subprocess_exec(
        *container["command"],
        cwd=container["workingDir"],
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    async for raw in process.stdout:
        api.log(pod, raw.decode("utf-8", "replace").rstrip("\r\n"))
    code = await process.wait()
    api.terminate(pod, code)
    return code
