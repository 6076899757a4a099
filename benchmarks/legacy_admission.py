"""The PostgreSQL admission queue as it was before decisions were made once per change
(gpuflow commit 7e9530b), kept only so that benchmarks/admission_scale.py can measure the
old design beside the new one in the same run.

Every poll of every waiter takes the one advisory lock (blocking) and runs a full decision
pass: reap with a scan, read and sort every row, ``admissible()`` in Python. Waiters poll
every ``poll_s``; nothing wakes a waiter of another process.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

import asyncpg

from gpuflow.gpu.admission.base import POOL_SEPARATOR, SELECT_ENTRIES, entry_from_row
from gpuflow.gpu.admission.policy import QueueEntry, Ticket

SCHEMA = """
CREATE TABLE IF NOT EXISTS gpuflow_admission_ticket (
    seq BIGSERIAL PRIMARY KEY,
    ticket_id TEXT NOT NULL UNIQUE,
    pools TEXT NOT NULL,
    slots INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    holder TEXT NOT NULL,
    admitted BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS gpuflow_admission_pool (
    pool TEXT PRIMARY KEY,
    slots INTEGER NOT NULL
);
"""
LOCK_KEY = 0x67707566_6C6F77


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


class LegacyPostgresQueue:
    """One pool of 4 per process, as the old queue had."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.passes: list[tuple[float, float]] = []  # (when, seconds) inside the lock

    @classmethod
    async def open(
        cls, dsn: str, on_connection: Callable[[asyncpg.Connection], None]
    ) -> "LegacyPostgresQueue":
        async def opened(connection: asyncpg.Connection) -> None:
            on_connection(connection)

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, init=opened)
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await connection.execute(SCHEMA)
        return cls(pool)

    async def enqueue(self, ticket: Ticket, capacity: dict[str, int], ttl_s: float) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await connection.executemany(
                "INSERT INTO gpuflow_admission_pool (pool, slots) VALUES ($1, $2) "
                "ON CONFLICT (pool) DO UPDATE SET slots = excluded.slots",
                list(capacity.items()),
            )
            await connection.execute(
                "INSERT INTO gpuflow_admission_ticket "
                "(ticket_id, pools, slots, rank, holder, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, EXTRACT(EPOCH FROM clock_timestamp()) + $6)",
                ticket.ticket_id,
                POOL_SEPARATOR.join(ticket.pools),
                ticket.slots,
                ticket.rank,
                ticket.holder,
                ttl_s,
            )

    async def try_admit(self, ticket_id: str, ttl_s: float) -> bool | None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            locked = time.monotonic()
            self.passes.append((time.time(), 0.0))
            verdict = await self._decide(connection, ticket_id, ttl_s)
            self.passes[-1] = (self.passes[-1][0], time.monotonic() - locked)
            return verdict

    @staticmethod
    async def _decide(connection: asyncpg.Connection, ticket_id: str, ttl_s: float) -> bool | None:
        await connection.execute(
            "DELETE FROM gpuflow_admission_ticket "
            "WHERE expires_at < EXTRACT(EPOCH FROM clock_timestamp())"
        )
        renewed = await connection.execute(
            "UPDATE gpuflow_admission_ticket "
            "SET expires_at = EXTRACT(EPOCH FROM clock_timestamp()) + $2 "
            "WHERE ticket_id = $1",
            ticket_id,
            ttl_s,
        )
        if renewed == "UPDATE 0":
            return None
        entries = [entry_from_row(row) for row in await connection.fetch(SELECT_ENTRIES)]
        capacity = {
            row["pool"]: row["slots"]
            for row in await connection.fetch("SELECT pool, slots FROM gpuflow_admission_pool")
        }
        if ticket_id not in admissible(entries, capacity):
            return False
        await connection.execute(
            "UPDATE gpuflow_admission_ticket SET admitted = TRUE WHERE ticket_id = $1",
            ticket_id,
        )
        return True

    async def heartbeat(self, ticket_id: str, ttl_s: float) -> bool:
        renewed = await self.pool.execute(
            "UPDATE gpuflow_admission_ticket "
            "SET expires_at = EXTRACT(EPOCH FROM clock_timestamp()) + $2 WHERE ticket_id = $1",
            ticket_id,
            ttl_s,
        )
        return bool(renewed != "UPDATE 0")

    async def leave(self, ticket_id: str) -> None:
        await self.pool.execute(
            "DELETE FROM gpuflow_admission_ticket WHERE ticket_id = $1", ticket_id
        )

    async def wait(
        self,
        ticket: Ticket,
        capacity: dict[str, int],
        ttl_s: float,
        poll_s: float,
        left: asyncio.Event,
        on_poll: "PollRecorder",
    ) -> None:
        """The old ``admitted()`` loop: poll, woken early only by a leave in this process."""
        while True:
            left.clear()
            started = time.time()
            verdict = await self.try_admit(ticket.ticket_id, ttl_s)
            on_poll(ticket.ticket_id, started, time.time() - started, verdict)
            if verdict:
                return
            if verdict is None:
                await self.enqueue(ticket, capacity, ttl_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(left.wait(), poll_s)


class PollRecorder:
    """Records each poll (ticket, start, duration, verdict)."""

    def __init__(self) -> None:
        self.polls: list[tuple[str, float, float, bool | None]] = []

    def __call__(self, ticket_id: str, started: float, took: float, verdict: bool | None) -> None:
        self.polls.append((ticket_id, started, took, verdict))
