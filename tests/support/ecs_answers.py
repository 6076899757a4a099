"""An HTTP server in front of moto that can answer with recorded AWS answers.

moto's ECS never reports ``failures`` from ``RunTask`` and its stopped tasks carry no
``stopCode``, ``stoppedReason`` or container exit code other than 0. The tests need
those answers, so this proxy forwards every request to moto unchanged, except:

- a queued ``RunTask`` answer (recorded from the AWS documentation) is returned instead
  of moto's, once;
- once moto reports a task as STOPPED (moto's own state manager moves it there), the
  recorded stop details registered for that task are merged into moto's answer.

The client under test is untouched: boto3 speaks HTTP to this server as it would to AWS.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113."


class AnswersProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._run_task_answers: deque[dict[str, Any]] = deque()
        self._stop_details: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.run_task_requests: list[dict[str, Any]] = []
        self.throttle_describe_tasks = 0  # answer this many DescribeTasks with throttling
        self.throttle_get_log_events = 0  # and this many GetLogEvents
        self.run_task_delay_s = 0.0  # a slow RunTask, to cancel a run while it is in flight

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def queue_run_task_answer(self, answer: dict[str, Any]) -> None:
        with self._lock:
            self._run_task_answers.append(answer)

    def on_stop(self, cluster: str, details: dict[str, Any]) -> None:
        """Merge ``details`` into a description of any of ``cluster``'s tasks once it stopped."""
        with self._lock:
            self._stop_details[cluster] = details

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
                cluster = str(task.get("clusterArn", "")).rsplit("/", 1)[-1]
                details = self._stop_details.get(cluster)
                if details is None or task.get("lastStatus") != "STOPPED":
                    continue
                containers = details.get("containers", [])
                task.update({k: v for k, v in details.items() if k != "containers"})
                for container, recorded in zip(
                    task.get("containers", []), containers, strict=False
                ):
                    # moto reports exit code 0 for every container; a container that never
                    # ran to an end has none at all.
                    container.pop("exitCode", None)
                    container.update(recorded)
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
        if operation == "RunTask":
            self.server.run_task_requests.append(json.loads(body))
            time.sleep(self.server.run_task_delay_s)
            recorded = self.server.next_run_task_answer()
            if recorded is not None:
                payload = json.dumps(recorded).encode()
                self._reply(200, [("Content-Type", "application/x-amz-json-1.1")], payload)
                return
        if self.server.take_throttle(operation):
            error = {"__type": "ThrottlingException", "message": "Rate exceeded"}
            self._reply(
                400, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(error).encode()
            )
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
        self._reply(status, answer_headers, answer)

    do_GET = _forward
    do_POST = _forward
    do_PUT = _forward
    do_DELETE = _forward
