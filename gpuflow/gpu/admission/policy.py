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


class Reservations:
    """Free slots per pool, handed to waiting requests in queue order: one that fits takes
    its slots; one that does not still reserves them, so freed slots drain to the head."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self.free = dict(capacity)

    def hold(self, pools: Iterable[str], slots: int) -> None:
        """Slots an admitted entry already holds."""
        for pool in pools:
            self.free[pool] = self.free.get(pool, 0) - slots

    def offer(self, pools: tuple[str, ...], slots: int) -> bool:
        """The next waiting entry in order: True if it fits (and takes its slots)."""
        fits = all(self.free.get(pool, 0) >= slots for pool in pools)
        # Admitted or not, its slots are spoken for: a blocked head keeps what frees up.
        self.hold(pools, slots)
        return fits

    def exhausted(self) -> bool:
        """No later entry can fit (every request takes at least one slot)."""
        return all(free <= 0 for free in self.free.values())


def admissible(entries: Iterable[QueueEntry], capacity: dict[str, int]) -> set[str]:
    """The tickets that may hold slots now: the admitted ones, and the waiting ones that fit
    in order, each waiting entry that does not fit reserving its slots ahead of later ones."""
    ordered = sorted(entries, key=lambda entry: (entry.rank, entry.seq))
    reservations = Reservations(capacity)
    chosen: set[str] = set()
    for entry in ordered:
        if entry.admitted:
            chosen.add(entry.ticket_id)
            reservations.hold(entry.pools, entry.slots)
    for entry in ordered:
        if reservations.exhausted():
            break
        if not entry.admitted and reservations.offer(entry.pools, entry.slots):
            chosen.add(entry.ticket_id)
    return chosen
