"""Where the admission queue is stored: the interface of its backends, and their rows."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from gpuflow.core.errors import GpuflowError
from gpuflow.gpu.admission.policy import QueueEntry, Ticket


class AdmissionError(GpuflowError):
    """The admission queue is misconfigured or unreachable."""

    retryable = True  # an unreachable database is infrastructure trouble


class AdmissionConfigError(GpuflowError, ValueError):
    """The admission queue's URL names no supported database."""


@dataclass(frozen=True)
class HandedLease:
    """A Prefect concurrency lease that a finished holder passed to the next admitted
    request through the queue: its id, and until when (epoch seconds) it is valid at least."""

    lease_id: str
    valid_until: float


class AdmissionQueue(ABC):
    """Storage of the queue; every method is one short transaction."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the queue lives, without credentials (for logs and in-process wake-ups)."""

    @abstractmethod
    async def enqueue(self, ticket: Ticket, capacity: dict[str, int], ttl_s: float) -> None:
        """Add ``ticket`` at the back of its priority and record the pools' sizes."""

    @abstractmethod
    async def try_admit(self, ticket_id: str, ttl_s: float) -> bool | None:
        """Renew the ticket's deadline and admit it if it is admissible now.

        ``None`` when the ticket is no longer queued (its deadline passed)."""

    @abstractmethod
    def wakeup(self, ticket_id: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """An event set when ``ticket_id`` may have become admissible; the waiter clears it,
        checks with ``try_admit``, and sleeps on it (with its poll interval as a fallback)."""

    def fallback_poll_s(self, poll_s: float) -> float | None:
        """How long a waiter sleeps on its wake-up before it checks anyway: ``poll_s``,
        or ``None`` (until woken) while the backend's wake-ups are known to arrive and it
        notices expired entries itself."""
        return poll_s

    @abstractmethod
    async def heartbeat(self, ticket_id: str, ttl_s: float) -> bool:
        """Push the ticket's deadline out; False when it is no longer queued."""

    @abstractmethod
    async def leave(self, ticket_id: str) -> None:
        """Remove the ticket (done, failed or cancelled)."""

    @abstractmethod
    async def hand_over(self, ticket_id: str, lease: HandedLease) -> str | None:
        """Leave the queue, passing ``lease`` to the waiting request that this leave admits
        and that wants the same pools and slots (the first in queue order), in one
        transaction; its id. ``None``, with nothing changed, when the leave admits none such
        (the holder then gives its slots back and leaves as usual)."""

    @abstractmethod
    async def handed_lease(self, ticket_id: str) -> HandedLease | None:
        """The lease handed to the admitted ``ticket_id``, if one was."""

    @abstractmethod
    async def entries(self) -> list[QueueEntry]:
        """Every live entry, expired ones dropped first."""


# Pool names are limit names ("gpu", "gpu:h100"); they never contain a newline.
POOL_SEPARATOR = "\n"


def entry_from_row(row: Any) -> QueueEntry:
    return QueueEntry(
        ticket_id=str(row[0]),
        pools=tuple(str(row[1]).split(POOL_SEPARATOR)),
        slots=int(row[2]),
        rank=int(row[3]),
        seq=int(row[4]),
        holder=str(row[5]),
        admitted=bool(row[6]),
        expires_at=float(row[7]),
    )


SELECT_ENTRIES = (
    "SELECT ticket_id, pools, slots, rank, seq, holder, admitted, expires_at "
    "FROM gpuflow_admission_ticket ORDER BY rank, seq"
)
