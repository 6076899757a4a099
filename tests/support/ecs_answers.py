"""An HTTP server in front of moto that adds what moto's ECS does not model.

moto's ECS never reports ``failures`` from ``RunTask``, its stopped tasks carry no
``stopCode``, ``stoppedReason`` or container exit code other than 0, and it accepts
task definitions and launches real ECS refuses. This proxy forwards every request to
moto unchanged, except:

- a queued ``RunTask`` answer is returned instead of moto's, once;
- stop details registered for a cluster belong to the next task ``RunTask`` starts
  there, and are merged into that task's description (only that task's) once moto's
  state manager has moved it to STOPPED; ``gpuIds`` only reach containers that asked
  for GPUs (in the task definition or the RunTask override), as on real ECS;
- ``RegisterTaskDefinition`` and ``RunTask`` are refused as ECS refuses them
  (``ClientException``): a Fargate task definition whose cpu/memory is no Fargate size
  or that asks for GPUs, a Fargate launch of a task definition that is not Fargate
  compatible or asks for GPUs, container overrides over 8,192 characters
  (``InvalidParameterException``);
- a ``RunTask`` repeating a ``clientToken`` gets the first call's answer: no second task.

None of these answers was captured from AWS: the queued and stop answers
(``tests/ecs/recorded/``) and the refusals below are written by hand from the AWS
documentation (Amazon ECS API Reference 2014-11-13: RunTask, RegisterTaskDefinition,
"Amazon ECS API failure reasons", "Amazon ECS stopped task error codes"; the Developer
Guide's "Task CPU and memory" table for Fargate on Linux), each place citing its page.
The client under test is untouched: boto3 speaks HTTP to this server as it would to AWS.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113."
# X-Amz-Target prefixes of the JSON-protocol services -> their IAM service prefix.
_SERVICES = {"AmazonEC2ContainerServiceV20141113": "ecs", "Logs_20140328": "logs"}
HARNESS_AGENT = "gpuflow-test-harness"
_JSON = [("Content-Type", "application/x-amz-json-1.1")]

# Developer Guide, "Task CPU and memory" (Fargate, Linux): task CPU units -> the memory
# values (MiB) Fargate offers with it.
FARGATE_SIZES: dict[int, range | tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: range(1024, 4096 + 1, 1024),
    1024: range(2048, 8192 + 1, 1024),
    2048: range(4096, 16384 + 1, 1024),
    4096: range(8192, 30720 + 1, 1024),
    8192: range(16384, 61440 + 1, 4096),
    16384: range(32768, 122880 + 1, 8192),
}
_FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")


class ClientException(Exception):
    """ECS's ``ClientException`` (HTTP 400): the request cannot succeed as sent."""


class InvalidParameterException(ClientException):
    """ECS's ``InvalidParameterException`` (HTTP 400): a parameter is out of its bounds."""


# API Reference, RunTask, ``overrides``: "A total of 8192 characters are allowed for
# overrides. This limit includes the JSON formatting characters of the override
# structure." Counted on the JSON as the client sent it (botocore: compact, non-ASCII
# escaped); the refusal's text is the one ECS answers (InvalidParameterException).
OVERRIDES_MAX_CHARS = 8192


def _check_overrides_length(request: dict[str, Any]) -> None:
    overrides = request.get("overrides")
    if (
        overrides is not None
        and len(json.dumps(overrides, separators=(",", ":"))) > OVERRIDES_MAX_CHARS
    ):
        raise InvalidParameterException(
            f"Container Overrides length must be at most {OVERRIDES_MAX_CHARS}"
        )


def _gpus(requirements: list[dict[str, Any]] | None) -> int:
    return sum(int(r["value"]) for r in requirements or [] if r.get("type") == "GPU")


def check_task_definition(request: dict[str, Any]) -> None:
    """What RegisterTaskDefinition refuses for Fargate (API Reference: RegisterTaskDefinition
    ``cpu``/``memory``; Fargate has no GPUs, "Amazon ECS task definitions for GPU
    workloads" is EC2 only). Messages are ours, in the style of ECS's."""
    if "FARGATE" not in (request.get("requiresCompatibilities") or []):
        return
    cpu, memory = request.get("cpu"), request.get("memory")
    if cpu is None or memory is None:
        raise ClientException(
            "Fargate requires that 'cpu' and 'memory' be defined at the task level."
        )
    if int(memory) not in FARGATE_SIZES.get(int(cpu), ()):
        raise ClientException(
            f"No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. "
            "See the Amazon ECS documentation for the valid combinations."
        )
    for container in request.get("containerDefinitions", []):
        if _gpus(container.get("resourceRequirements")):
            raise ClientException(
                f"Container '{container.get('name')}' has GPU resource requirements, which "
                "the Fargate launch type does not support."
            )


def _on_fargate(request: dict[str, Any]) -> bool:
    if request.get("launchType") is not None:
        return bool(request["launchType"] == "FARGATE")
    strategy = request.get("capacityProviderStrategy") or []
    return any(item.get("capacityProvider") in _FARGATE_PROVIDERS for item in strategy)


@dataclass
class _Started:
    """What the proxy knows of a task it saw start: its containers' GPUs and stop details."""

    gpus: dict[str, int]
    stop_details: dict[str, Any] | None


class AnswersProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._run_task_answers: deque[dict[str, Any]] = deque()
        self._next_stop_details: dict[str, deque[dict[str, Any]]] = {}
        self._task_definitions: dict[str, dict[str, Any]] = {}  # ARN -> request
        self._started: dict[str, _Started] = {}  # task ARN -> what we know of it
        self._answers_by_token: dict[str, bytes] = {}
        self.calls: list[str] = []
        # "<service>:<operation>" of each call from the code under test (the tests' own
        # setup calls carry HARNESS_AGENT in their User-Agent and are left out).
        self.code_calls: list[str] = []
        self.run_task_requests: list[dict[str, Any]] = []
        self.throttle_describe_tasks = 0  # answer this many DescribeTasks with throttling
        self.throttle_get_log_events = 0  # and this many GetLogEvents
        self.run_task_delay_s = 0.0  # a slow RunTask, to cancel a run while it is in flight
        self.lose_run_task_answers = 0  # start this many tasks but drop the connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def queue_run_task_answer(self, answer: dict[str, Any]) -> None:
        with self._lock:
            self._run_task_answers.append(answer)

    def on_stop(self, cluster: str, details: dict[str, Any]) -> None:
        """Merge ``details`` into the description of the next task started on ``cluster``,
        once that task stopped (several calls: one for each next task, in order)."""
        with self._lock:
            self._next_stop_details.setdefault(cluster, deque()).append(details)

    def registered(self, request: dict[str, Any], answer: dict[str, Any]) -> None:
        with self._lock:
            arn = answer["taskDefinition"]["taskDefinitionArn"]
            self._task_definitions[arn] = request
            family, revision = arn.rsplit("/", 1)[-1].split(":")
            self._task_definitions[f"{family}:{revision}"] = request
            self._task_definitions[family] = request  # the latest revision

    def check_run_task(self, request: dict[str, Any]) -> None:
        """What RunTask refuses (API Reference: RunTask, ``launchType``, ``overrides``):
        overrides over 8,192 characters, a Fargate launch of a task definition that is not
        Fargate compatible or asks for GPUs."""
        _check_overrides_length(request)
        if not _on_fargate(request):
            return
        with self._lock:
            definition = self._task_definitions.get(str(request.get("taskDefinition")))
        if definition is None:
            return  # not registered through this proxy: moto answers
        if "FARGATE" not in (definition.get("requiresCompatibilities") or []):
            raise ClientException("Task definition does not support launch_type FARGATE.")
        overrides = (request.get("overrides") or {}).get("containerOverrides") or []
        containers = [*definition.get("containerDefinitions", []), *overrides]
        if any(_gpus(c.get("resourceRequirements")) for c in containers):
            raise ClientException("Tasks with GPU resource requirements cannot run on Fargate.")

    def started(self, request: dict[str, Any], answer: dict[str, Any]) -> None:
        """Bind the cluster's next stop details and the containers' GPUs to the new tasks."""
        with self._lock:
            definition = self._task_definitions.get(str(request.get("taskDefinition"))) or {}
            gpus = {
                c["name"]: _gpus(c.get("resourceRequirements"))
                for c in definition.get("containerDefinitions", [])
            }
            for override in (request.get("overrides") or {}).get("containerOverrides") or []:
                if override.get("resourceRequirements") is not None:
                    gpus[override["name"]] = _gpus(override["resourceRequirements"])
            cluster = str(request.get("cluster", "default")).rsplit("/", 1)[-1]
            pending = self._next_stop_details.get(cluster) or deque()
            for task in answer.get("tasks", []):
                details = pending.popleft() if pending else None
                self._started[task["taskArn"]] = _Started(gpus, details)

    def take_lost_answer(self) -> bool:
        with self._lock:
            if self.lose_run_task_answers <= 0:
                return False
            self.lose_run_task_answers -= 1
            return True

    def answer_for_token(self, token: str | None) -> bytes | None:
        with self._lock:
            return self._answers_by_token.get(token) if token else None

    def remember_token(self, token: str | None, answer: bytes) -> None:
        if token:
            with self._lock:
                self._answers_by_token.setdefault(token, answer)

    def take_throttle(self, operation: str) -> bool:
        counter = {
            "DescribeTasks": "throttle_describe_tasks",
            "Logs_20140328.GetLogEvents": "throttle_get_log_events",
        }.get(operation)
        with self._lock:
            if counter is None or getattr(self, counter) <= 0:
                return False
            setattr(self, counter, getattr(self, counter) - 1)
            return True

    def next_run_task_answer(self) -> dict[str, Any] | None:
        with self._lock:
            return self._run_task_answers.popleft() if self._run_task_answers else None

    def overlay(self, answer: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for task in answer.get("tasks", []):
                started = self._started.get(task.get("taskArn", ""))
                if started is None or started.stop_details is None:
                    continue
                if task.get("lastStatus") != "STOPPED":
                    continue
                details = started.stop_details
                containers = details.get("containers", [])
                task.update({k: v for k, v in details.items() if k != "containers"})
                for container, written in zip(task.get("containers", []), containers, strict=False):
                    # moto reports exit code 0 for every container; a container that never
                    # ran to an end has none at all.
                    container.pop("exitCode", None)
                    container.update(written)
                    if not started.gpus.get(container.get("name", ""), 0):
                        container.pop("gpuIds", None)  # ECS assigns GPUs only when asked
        return answer


class _Handler(BaseHTTPRequestHandler):
    server: AnswersProxy

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        return

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in (
                "content-length",
                "transfer-encoding",
                "connection",
                "server",
                "date",
            ):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        operation = target.removeprefix(_TARGET_PREFIX)
        self.server.calls.append(operation or self.path)
        service, _, name = target.partition(".")
        if name and HARNESS_AGENT not in self.headers.get("User-Agent", ""):
            self.server.code_calls.append(f"{_SERVICES.get(service, service)}:{name}")
        request = json.loads(body) if operation and body else {}
        try:
            if operation == "RegisterTaskDefinition":
                check_task_definition(request)
            if operation == "RunTask":
                self.server.check_run_task(request)
        except ClientException as refusal:
            error = {"__type": type(refusal).__name__, "message": str(refusal)}
            self._reply(400, _JSON, json.dumps(error).encode())
            return
        if operation == "RunTask":
            self.server.run_task_requests.append(request)
            time.sleep(self.server.run_task_delay_s)
            first = self.server.answer_for_token(request.get("clientToken"))
            if first is not None:  # RunTask's clientToken: a repeat returns the first task
                self._reply(200, _JSON, first)
                return
            queued = self.server.next_run_task_answer()
            if queued is not None:
                self._reply(200, _JSON, json.dumps(queued).encode())
                return
        if self.server.take_throttle(operation):
            error = {"__type": "ThrottlingException", "message": "Rate exceeded"}
            self._reply(400, _JSON, json.dumps(error).encode())
            return
        upstream = http.client.HTTPConnection(
            self.server.upstream_host, self.server.upstream_port, timeout=30
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
            status, answer_headers = response.status, response.getheaders()
        finally:
            upstream.close()
        if operation == "DescribeTasks" and status == 200:
            answer = json.dumps(self.server.overlay(json.loads(answer))).encode()
        if operation == "RegisterTaskDefinition" and status == 200:
            self.server.registered(request, json.loads(answer))
        if operation == "RunTask" and status == 200:
            self.server.started(request, json.loads(answer))
            self.server.remember_token(request.get("clientToken"), answer)
            if self.server.take_lost_answer():
                self.close_connection = True  # the task started; its answer never arrives
                return
        self._reply(status, answer_headers, answer)

    do_GET = _forward
    do_POST = _forward
    do_PUT = _forward
    do_DELETE = _forward
