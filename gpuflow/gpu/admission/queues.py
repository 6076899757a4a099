"""Opening the admission queue a URL names."""

from __future__ import annotations

from pathlib import Path

from gpuflow.gpu.admission.base import AdmissionConfigError, AdmissionQueue
from gpuflow.gpu.admission.postgres import PostgresAdmissionQueue
from gpuflow.gpu.admission.sqlite import SqliteAdmissionQueue


def admission_queue(url: str) -> AdmissionQueue:
    """The queue at ``url``: ``sqlite:///<path>`` or ``postgresql://user:pass@host/db``."""
    if url.startswith("sqlite:///"):
        return SqliteAdmissionQueue(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        return PostgresAdmissionQueue(url)
    scheme = url.partition("://")[0] if "://" in url else url[:20]
    raise AdmissionConfigError(
        f"admission queue URL scheme {scheme!r} is not supported: "
        "use sqlite:///<path> or postgresql://<user>@<host>/<db>"
    )
