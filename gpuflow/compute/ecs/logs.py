"""Reading an ECS task's CloudWatch log stream forward, page by page."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gpuflow.compute.ecs.aws import as_gpuflow_error
from gpuflow.compute.ecs.outcome import EcsTaskError


class LogFollower:
    """Reads a CloudWatch log stream forward, page by page, from where it left off."""

    def __init__(self, client: Any, group: str, stream: str, page_size: int = 10000) -> None:
        self._client = client
        self.page_size = page_size
        self.group = group
        self.stream = stream
        self._token: str | None = None
        self.seen_any = False

    def read_new(self) -> list[str]:
        """Every line logged since the last call (the stream may not exist yet)."""
        lines: list[str] = []
        for _ in range(1000):  # bounded: 1000 pages of up to 10,000 events each
            arguments: dict[str, Any] = {
                "logGroupName": self.group,
                "logStreamName": self.stream,
                "startFromHead": True,
                "limit": self.page_size,
            }
            if self._token is not None:
                arguments["nextToken"] = self._token
            try:
                page = self._client.get_log_events(**arguments)
            except self._client.exceptions.ResourceNotFoundException:
                return lines  # the container has not started logging yet
            except (ClientError, BotoCoreError) as error:
                if lines:
                    break  # hand over what was read; the next call resumes from the token
                if isinstance(error, ClientError):
                    raise as_gpuflow_error(error, f"log stream {self.stream}") from error
                raise EcsTaskError(
                    f"reading log stream {self.stream} failed: {error}", retryable=True
                ) from error
            for event in page.get("events", []):
                lines.extend(str(event.get("message", "")).splitlines() or [""])
            token = page.get("nextForwardToken")
            # CloudWatch hands back the token it was given once the stream is read to its end.
            finished = token is None or token == self._token
            self._token = token or self._token
            if finished or not page.get("events"):
                break
        self.seen_any = self.seen_any or bool(lines)
        return lines
