"""The admission queue in PostgreSQL: shared by the flows of every host."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

import asyncpg

from gpuflow.core.redaction import redacted_url
from gpuflow.gpu.admission.base import (
    POOL_SEPARATOR,
    SELECT_ENTRIES,
    AdmissionConfigError,
    AdmissionError,
    AdmissionQueue,
    entry_from_row,
)
from gpuflow.gpu.admission.policy import QueueEntry, Ticket, admissible

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
CREATE TABLE IF NOT EXISTS gpuflow_admission_pool (
    pool TEXT PRIMARY KEY,
    slots INTEGER NOT NULL
);
"""


# One advisory lock serialises admission decisions (they read the whole queue).
_POSTGRES_LOCK_KEY = 0x67707566_6C6F77  # "gpuflow"
# Connection pools per event loop (asyncpg pools cannot cross loops) and DSN.
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncpg.Pool]] = (
    weakref.WeakKeyDictionary()
)
_POOL_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
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

    async def _pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        pools = _POOLS.setdefault(loop, {})
        pool = pools.get(self._dsn)
        if pool is not None:
            return pool
        async with _POOL_LOCKS.setdefault(loop, asyncio.Lock()):
            pool = pools.get(self._dsn)
            if pool is None:
                pool = await self._create_pool()
                pools[self._dsn] = pool
            return pool

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4)
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _POSTGRES_LOCK_KEY)
                await connection.execute(_POSTGRES_SCHEMA)
        except (OSError, asyncpg.PostgresError) as exc:
            raise AdmissionError(
                f"cannot reach the admission queue {self.location}: {exc}"
            ) from exc
        except (ValueError, TypeError, OverflowError, asyncpg.InterfaceError) as exc:
            # The driver's parse errors quote pieces of the URL, password included.
            raise AdmissionConfigError(
                f"the admission queue URL {self.location} is malformed ({type(exc).__name__}); "
                "percent-encode a user or password that holds '/', '?', '#' or '@'"
            ) from None
        return pool

    @contextlib.asynccontextmanager
    async def _unreachable_as_admission_error(self) -> AsyncIterator[None]:
        """A dropped connection or a database that is down is an ``AdmissionError``, which
        waiting rides out, never a bare ``ConnectionError`` that would fail the run."""
        try:
            yield
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise AdmissionError(
                f"the admission queue {self.location} failed: {type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._unreachable_as_admission_error():
            pool = await self._pool()
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _POSTGRES_LOCK_KEY)
                yield connection

    @staticmethod
    async def _reap(connection: asyncpg.Connection) -> None:
        await connection.execute(
            "DELETE FROM gpuflow_admission_ticket "
            "WHERE expires_at < EXTRACT(EPOCH FROM clock_timestamp())"
        )

    async def enqueue(self, ticket: Ticket, capacity: dict[str, int], ttl_s: float) -> None:
        async with self._transaction() as connection:
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
        async with self._transaction() as connection:
            await self._reap(connection)
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
        async with self._unreachable_as_admission_error():
            pool = await self._pool()
            renewed = await pool.execute(
                "UPDATE gpuflow_admission_ticket "
                "SET expires_at = EXTRACT(EPOCH FROM clock_timestamp()) + $2 "
                "WHERE ticket_id = $1",
                ticket_id,
                ttl_s,
            )
        return bool(renewed != "UPDATE 0")

    async def leave(self, ticket_id: str) -> None:
        async with self._unreachable_as_admission_error():
            pool = await self._pool()
            await pool.execute(
                "DELETE FROM gpuflow_admission_ticket WHERE ticket_id = $1", ticket_id
            )

    async def entries(self) -> list[QueueEntry]:
        async with self._transaction() as connection:
            await self._reap(connection)
            return [entry_from_row(row) for row in await connection.fetch(SELECT_ENTRIES)]
