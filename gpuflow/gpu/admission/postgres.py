"""The admission queue in PostgreSQL: shared by the flows of every host.

Decisions are made once per change, not once per poll. Enqueue and leave bump a version
row in the same transaction as their change; whoever then wins a non-blocking try-lock
runs one decision pass (reap expired entries, read the queue, mark every admissible
ticket in one statement, ``NOTIFY`` their ids) and records the version it decided. Waiters
never take the lock: they sleep on ``LISTEN``. The process's agent (``postgres_agent``)
renews the deadlines of all its entries in one batched statement and asks, once per
interval for all its waiters, whether a pass is still owed (a change not yet decided, or
an entry past its deadline); a waiter only polls (a batched primary-key read) while its
process has no ``LISTEN`` connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

from gpuflow.core.redaction import redacted_url
from gpuflow.gpu.admission.base import (
    POOL_SEPARATOR,
    AdmissionQueue,
    HandedLease,
    entry_from_row,
)
from gpuflow.gpu.admission.policy import QueueEntry, Reservations, Ticket
from gpuflow.gpu.admission.postgres_agent import PostgresAgent, QueueStatements, agent_for

_POSTGRES_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS gpuflow_admission_ticket_expires_at
    ON gpuflow_admission_ticket (expires_at);
CREATE INDEX IF NOT EXISTS gpuflow_admission_ticket_waiting
    ON gpuflow_admission_ticket (rank, seq) WHERE NOT admitted;
CREATE TABLE IF NOT EXISTS gpuflow_admission_pool (
    pool TEXT PRIMARY KEY,
    slots INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gpuflow_admission_change (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL DEFAULT 0,
    decided BIGINT NOT NULL DEFAULT 0
);
INSERT INTO gpuflow_admission_change (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
ALTER TABLE gpuflow_admission_ticket ADD COLUMN IF NOT EXISTS handed_lease TEXT;
ALTER TABLE gpuflow_admission_ticket
    ADD COLUMN IF NOT EXISTS handed_lease_valid_until DOUBLE PRECISION;
CREATE TABLE IF NOT EXISTS gpuflow_admission_schema (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
"""
_RECORD_SCHEMA_VERSION = """
INSERT INTO gpuflow_admission_schema (id, version) VALUES (1, $1)
    ON CONFLICT (id) DO UPDATE SET version = GREATEST(gpuflow_admission_schema.version, $1)
"""
# Raised with every change to _POSTGRES_SCHEMA: a process finds the schema at (or past) its
# version and runs no DDL, which would take ACCESS EXCLUSIVE locks on the queue's tables
# (ALTER TABLE does even where the column exists) and deadlock with the statements of the
# processes already using them.
_SCHEMA_VERSION = 2

# The decision lock (the key of earlier releases, which took it blocking on every poll,
# so a process of an older release still never decides beside a pass of this one).
_DECISION_LOCK_KEY = 0x67707566_6C6F77  # "gpuflow"
_SCHEMA_LOCK_KEY = _DECISION_LOCK_KEY + 1
CHANNEL = "gpuflow_admission"
_NOTIFY_PAYLOAD_BYTES = 7000  # PostgreSQL's limit is 8000
_WAITING_PAGE = 200

_BUMP_VERSION = "UPDATE gpuflow_admission_change SET version = version + 1 WHERE id = 1"
# A hand-over needs the decision lock; a pass holds it for milliseconds.
_HAND_OVER_TRIES_S = (0.0, 0.01, 0.03)

_CHECK_BATCH = """
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::float8[], $3::bool[]) AS wanted(ticket_id, ttl_s, renew)
), locked AS (
    -- Rows locked in ticket order, as the decision pass locks them: no deadlock between
    -- a batch of renewals and a pass that admits some of the same tickets.
    SELECT ticket.ticket_id FROM gpuflow_admission_ticket AS ticket JOIN wanted USING (ticket_id)
    WHERE wanted.renew ORDER BY ticket.ticket_id FOR UPDATE OF ticket
), renewed AS (
    UPDATE gpuflow_admission_ticket AS ticket
    SET expires_at = EXTRACT(EPOCH FROM clock_timestamp()) + wanted.ttl_s
    FROM wanted JOIN locked USING (ticket_id)
    WHERE ticket.ticket_id = wanted.ticket_id
    RETURNING ticket.ticket_id, ticket.admitted
)
SELECT ticket_id, admitted FROM renewed
UNION ALL
SELECT ticket.ticket_id, ticket.admitted
FROM gpuflow_admission_ticket AS ticket JOIN wanted USING (ticket_id)
WHERE NOT wanted.renew
"""

_DECISION_OWED = """
SELECT (SELECT version > decided FROM gpuflow_admission_change WHERE id = 1)
    OR EXISTS (
        SELECT 1 FROM gpuflow_admission_ticket
        WHERE expires_at < EXTRACT(EPOCH FROM clock_timestamp())
    )
"""


async def _prepare(connection: asyncpg.Connection) -> None:
    """Bring the schema to this release's version, taking no table lock where it is."""
    if await _schema_version(connection) >= _SCHEMA_VERSION:
        return
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
        if await _schema_version(connection) >= _SCHEMA_VERSION:
            return  # another process upgraded it while we waited for the lock
        # A migration, once per release that changes the schema: its locks may still make
        # PostgreSQL end a running statement as a deadlock victim, which its waiter retries.
        await connection.execute(_POSTGRES_SCHEMA)
        await connection.execute(_RECORD_SCHEMA_VERSION, _SCHEMA_VERSION)


async def _schema_version(connection: asyncpg.Connection) -> int:
    """The schema version recorded in the database; 0 where none is (new, or older than
    the version table)."""
    if await connection.fetchval("SELECT to_regclass('gpuflow_admission_schema')") is None:
        return 0
    version = await connection.fetchval("SELECT version FROM gpuflow_admission_schema")
    return int(version or 0)


async def _check_batch(
    connection: asyncpg.Connection, batch: list[tuple[str, float, bool]]
) -> tuple[dict[str, bool], bool]:
    tickets, ttls, renews = (list(column) for column in zip(*batch, strict=True))
    rows = await connection.fetch(_CHECK_BATCH, tickets, ttls, renews)
    return {row["ticket_id"]: row["admitted"] for row in rows}, await _pass_due(connection)


async def _pass_due(connection: asyncpg.Connection) -> bool:
    return bool(await connection.fetchval(_DECISION_OWED))


async def _decide(connection: asyncpg.Connection) -> bool:
    """One decision pass, if this connection wins the try-lock (False otherwise)."""
    async with connection.transaction():
        if not await connection.fetchval(
            "SELECT pg_try_advisory_xact_lock($1)", _DECISION_LOCK_KEY
        ):
            return False
        version = await connection.fetchval(
            "SELECT version FROM gpuflow_admission_change WHERE id = 1"
        )
        await connection.execute(
            "DELETE FROM gpuflow_admission_ticket "
            "WHERE expires_at < EXTRACT(EPOCH FROM clock_timestamp())"
        )
        capacity = {
            row["pool"]: row["slots"]
            for row in await connection.fetch("SELECT pool, slots FROM gpuflow_admission_pool")
        }
        newly = await _admissible_waiting(connection, capacity)
        if newly:
            # Locked in ticket order, as renewals lock them (see _CHECK_BATCH).
            await connection.execute(
                "UPDATE gpuflow_admission_ticket SET admitted = TRUE WHERE ticket_id IN ("
                "SELECT ticket_id FROM gpuflow_admission_ticket WHERE ticket_id = ANY($1::text[]) "
                "ORDER BY ticket_id FOR UPDATE)",
                newly,
            )
            # Delivered on commit, to every process's LISTEN connection.
            for payload in _payloads(newly):
                await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        await connection.execute(
            "UPDATE gpuflow_admission_change SET decided = $1 WHERE id = 1", version
        )
    return True


async def _admissible_waiting(
    connection: asyncpg.Connection, capacity: dict[str, int]
) -> list[str]:
    """The waiting tickets that are admissible now, reading no further down the queue than
    the free slots reach (the partial index keeps the waiting entries in order)."""
    reservations = Reservations(capacity)
    for row in await connection.fetch(
        "SELECT pools, sum(slots)::int AS slots FROM gpuflow_admission_ticket "
        "WHERE admitted GROUP BY pools"
    ):
        reservations.hold(row["pools"].split(POOL_SEPARATOR), row["slots"])
    newly: list[str] = []
    after = (-1, -1)
    while not reservations.exhausted():
        rows = await connection.fetch(
            "SELECT ticket_id, pools, slots, rank, seq FROM gpuflow_admission_ticket "
            "WHERE NOT admitted AND (rank, seq) > ($1, $2) ORDER BY rank, seq LIMIT $3",
            *after,
            _WAITING_PAGE,
        )
        for row in rows:
            if reservations.offer(tuple(row["pools"].split(POOL_SEPARATOR)), row["slots"]):
                newly.append(row["ticket_id"])
            if reservations.exhausted():
                break
        if len(rows) < _WAITING_PAGE:
            break
        after = (rows[-1]["rank"], rows[-1]["seq"])
    return newly


class _NoReceiver(Exception):
    """Rolls a hand-over back: the leave admits no request that can take the lease."""


class _DecisionBusy(Exception):
    """A pass holds the decision lock: the hand-over tries again shortly."""


async def _hand_over(
    connection: asyncpg.Connection, ticket_id: str, lease: HandedLease
) -> str | None:
    """Leave and hand ``lease`` to the request the leave admits, under the decision lock
    (``None``: no such request, nothing changed)."""
    async with connection.transaction():
        if not await connection.fetchval(
            "SELECT pg_try_advisory_xact_lock($1)", _DECISION_LOCK_KEY
        ):
            raise _DecisionBusy
        left = await connection.fetchrow(
            "SELECT pools, slots FROM gpuflow_admission_ticket WHERE ticket_id = $1 AND admitted",
            ticket_id,
        )
        if left is None:
            return None
        capacity = {
            row["pool"]: row["slots"]
            for row in await connection.fetch("SELECT pool, slots FROM gpuflow_admission_pool")
        }
        # The leaving holder's slots count as free: its leave is what admits the receiver.
        for pool in left["pools"].split(POOL_SEPARATOR):
            capacity[pool] = capacity.get(pool, 0) + left["slots"]
        newly = await _admissible_waiting(connection, capacity)
        receiver = await connection.fetchval(
            "SELECT ticket_id FROM gpuflow_admission_ticket WHERE ticket_id = ANY($1::text[]) "
            "AND pools = $2 AND slots = $3 "
            "AND expires_at >= EXTRACT(EPOCH FROM clock_timestamp()) "
            "ORDER BY rank, seq LIMIT 1",
            newly,
            left["pools"],
            left["slots"],
        )
        if receiver is None:
            return None
        # Both rows locked in ticket order, as renewals and passes lock them (no deadlock).
        await connection.execute(
            "SELECT 1 FROM gpuflow_admission_ticket WHERE ticket_id = ANY($1::text[]) "
            "ORDER BY ticket_id FOR UPDATE",
            [ticket_id, receiver],
        )
        await connection.execute(
            "DELETE FROM gpuflow_admission_ticket WHERE ticket_id = $1", ticket_id
        )
        handed = await connection.execute(
            "UPDATE gpuflow_admission_ticket SET admitted = TRUE, handed_lease = $2, "
            "handed_lease_valid_until = $3 WHERE ticket_id = $1 AND NOT admitted",
            receiver,
            lease.lease_id,
            lease.valid_until,
        )
        if handed != "UPDATE 1":  # it left meanwhile
            raise _NoReceiver
        # Only the receiver is marked here; the others this leave admits (other pools, free
        # slots) are the next pass's, owed through the version.
        await connection.execute(_BUMP_VERSION)
        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, receiver)
    return str(receiver)


def _payloads(ticket_ids: list[str]) -> list[str]:
    """Comma-separated ids, each payload within PostgreSQL's NOTIFY limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for ticket_id in ticket_ids:
        if current and size + len(ticket_id) + 1 > _NOTIFY_PAYLOAD_BYTES:
            payloads.append(",".join(current))
            current, size = [], 0
        current.append(ticket_id)
        size += len(ticket_id.encode()) + 1
    if current:
        payloads.append(",".join(current))
    return payloads


STATEMENTS = QueueStatements(
    prepare=_prepare,
    check_batch=_check_batch,
    decide=_decide,
    pass_due=_pass_due,
    channel=CHANNEL,
)


class PostgresAdmissionQueue(AdmissionQueue):
    """The queue in PostgreSQL: shared by flows on every host; the database's clock decides
    deadlines, so hosts need not agree on the time."""

    def __init__(self, dsn: str) -> None:
        # SQLAlchemy-style URLs (as Prefect's own setting uses) name the driver; asyncpg does not.
        self._dsn = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)

    @property
    def location(self) -> str:
        return redacted_url(self._dsn)

    def _agent(self) -> PostgresAgent:
        return agent_for(self._dsn, STATEMENTS)

    async def enqueue(self, ticket: Ticket, capacity: dict[str, int], ttl_s: float) -> None:
        agent = self._agent()
        started = time.monotonic()  # before the database sets the deadline
        async with agent.connection() as connection, connection.transaction():
            await connection.executemany(
                "INSERT INTO gpuflow_admission_pool AS pool (pool, slots) VALUES ($1, $2) "
                "ON CONFLICT (pool) DO UPDATE SET slots = excluded.slots "
                "WHERE pool.slots <> excluded.slots",
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
            await connection.execute(_BUMP_VERSION)
        agent.track(ticket.ticket_id, ttl_s, started)
        agent.request_pass()

    async def try_admit(self, ticket_id: str, ttl_s: float) -> bool | None:
        # The agent renews the deadline (it renews every entry of the process).
        return await self._agent().check(ticket_id)

    def wakeup(self, ticket_id: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        return self._agent().wakeup(ticket_id)

    def fallback_poll_s(self, poll_s: float) -> float | None:
        # While this process LISTENs, an admission comes with its NOTIFY; the agent probes
        # for owed passes for every waiter, wakes those it finds gone, and wakes all of
        # them if the LISTEN connection is lost: a waiter has nothing to poll for.
        return None if self._agent().listening() else poll_s

    async def heartbeat(self, ticket_id: str, ttl_s: float) -> bool:
        # The agent renews the entry from its enqueue to its leave, batched per process.
        return self._agent().still_queued(ticket_id)

    async def leave(self, ticket_id: str) -> None:
        agent = self._agent()
        async with agent.connection() as connection, connection.transaction():
            left = await connection.fetchval(
                "WITH gone AS (DELETE FROM gpuflow_admission_ticket WHERE ticket_id = $1 "
                "RETURNING 1) SELECT count(*) FROM gone",
                ticket_id,
            )
            if left:
                await connection.execute(_BUMP_VERSION)
        agent.forget(ticket_id)
        agent.request_pass()

    async def hand_over(self, ticket_id: str, lease: HandedLease) -> str | None:
        agent = self._agent()
        for pause_s in _HAND_OVER_TRIES_S:
            await asyncio.sleep(pause_s)
            try:
                async with agent.connection() as connection:
                    receiver = await _hand_over(connection, ticket_id, lease)
            except _DecisionBusy:
                continue
            except _NoReceiver:
                return None
            break
        else:
            return None
        if receiver is None:
            return None
        agent.forget(ticket_id)
        agent.request_pass()
        return receiver

    async def handed_lease(self, ticket_id: str) -> HandedLease | None:
        async with self._agent().connection() as connection:
            row = await connection.fetchrow(
                "SELECT handed_lease, handed_lease_valid_until FROM gpuflow_admission_ticket "
                "WHERE ticket_id = $1 AND handed_lease IS NOT NULL",
                ticket_id,
            )
        return None if row is None else HandedLease(row[0], float(row[1]))

    async def entries(self) -> list[QueueEntry]:
        async with self._agent().connection() as connection:
            rows = await connection.fetch(
                "SELECT ticket_id, pools, slots, rank, seq, holder, admitted, expires_at "
                "FROM gpuflow_admission_ticket "
                "WHERE expires_at >= EXTRACT(EPOCH FROM clock_timestamp()) ORDER BY rank, seq"
            )
        return [entry_from_row(row) for row in rows]
