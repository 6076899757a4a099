"""The admission policy: which waiting requests may take GPU slots now (pure, no I/O)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from gpuflow.core.request import Priority

PRIORITY_RANK: dict[Priority, int] = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.BATCH: 2}


@dataclass(frozen=True)
class Ticket:
    """One request for ``slots`` GPUs of each pool (limit) in ``pools``."""

    pools: tuple[str, ...]
    slots: int
    priority: Priority
    holder: str
    ticket_id: str = ""

    def __post_init__(self) -> None:
        if not self.ticket_id:
            object.__setattr__(self, "ticket_id", uuid.uuid4().hex)

    @property
    def rank(self) -> int:
        return PRIORITY_RANK[self.priority]


@dataclass(frozen=True)
class QueueEntry:
    ticket_id: str
    pools: tuple[str, ...]
    slots: int
    rank: int
    seq: int
    holder: str
    admitted: bool
    expires_at: float


def admissible(entries: Iterable[QueueEntry], capacity: dict[str, int]) -> set[str]:
    """The tickets that may hold slots now: the admitted ones, and the waiting ones that fit
    in order, each waiting entry that does not fit reserving its slots ahead of later ones."""
    ordered = sorted(entries, key=lambda entry: (entry.rank, entry.seq))
    free = dict(capacity)
    chosen: set[str] = set()
    for entry in ordered:
        if entry.admitted:
            chosen.add(entry.ticket_id)
            for pool in entry.pools:
                free[pool] = free.get(pool, 0) - entry.slots
    for entry in ordered:
        if entry.admitted:
            continue
        fits = all(free.get(pool, 0) >= entry.slots for pool in entry.pools)
        if fits:
            chosen.add(entry.ticket_id)
        # Admitted or not, its slots are spoken for: a blocked head keeps what frees up.
        for pool in entry.pools:
            free[pool] = free.get(pool, 0) - entry.slots
    return chosen
