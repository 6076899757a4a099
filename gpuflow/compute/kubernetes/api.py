"""What every call to the Kubernetes API shares: retry rules, error classes, no secrets in
the client's debug log."""

from __future__ import annotations

import logging

from kubernetes_asyncio.client.exceptions import ApiException

from gpuflow.compute.kubernetes.manifest import KubernetesConfigError
from gpuflow.compute.kubernetes.status import JobStartError

# Consecutive failed calls of one kind (pod lists, log reads) before giving up on them.
API_FAILURES_TOLERATED = 10


class _NoSecretBodies(logging.Filter):
    """kubernetes_asyncio logs every response body at DEBUG level: a Secret's included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("response body"):
            return True
        body = record.args[0] if isinstance(record.args, tuple) and record.args else b""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        return '"kind":"Secret"' not in text.replace(" ", "")


logging.getLogger("kubernetes_asyncio.client.rest").addFilter(_NoSecretBodies())


def transient(error: BaseException) -> bool:
    """Errors worth another try: server-side trouble, throttling, a broken connection."""
    if isinstance(error, ApiException):
        return error.status is None or error.status >= 500 or error.status == 429
    return True


def api_error(action: str, error: ApiException) -> Exception:
    """An API failure with the server's own message; 4xx are the configuration's fault."""
    body = error.body.decode("utf-8", "replace") if isinstance(error.body, bytes) else error.body
    message = f"{action} failed: HTTP {error.status} {error.reason}: {body or ''}".rstrip()
    if error.status is not None and 400 <= error.status < 500 and error.status not in (409, 429):
        return KubernetesConfigError(message)
    return JobStartError(message, retryable=True)
