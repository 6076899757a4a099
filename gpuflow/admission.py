"""Fair admission to the GPU limits: by priority, then arrival; a large request is never
overtaken forever by small ones.

Prefect's limit is the hard fence (never more than N GPUs), but its waiters are
unordered: a 4-GPU job can starve behind a stream of 1-GPU jobs, and a high-priority
request can wait behind batch work. So before taking Prefect slots, a request joins
this queue and waits until it is *admissible*:

- entries are ordered by (priority rank, arrival);
- admitted entries hold their slots; the free slots of each pool go to waiting entries
  in order; an entry that does not fit *reserves* what it needs in each of its pools
  (nothing after it may take those slots), so freed slots drain towards the head.

The queue lives in a database shared by every flow process, never in one process's
memory: PostgreSQL for several hosts, SQLite on the NAS for the embedded default (one
host). Every entry carries a heartbeat deadline; the entry of a waiter or holder that
died is dropped once its deadline passes, so a dead process cannot block the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from gpuflow.errors import GpuflowError
from gpuflow.request import Priority

logger = logging.getLogger(__name__)

PRIORITY_RANK: dict[Priority, int] = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.BATCH: 2}


class AdmissionError(GpuflowError):
    """The admission queue is misconfigured or unreachable."""

    retryable = True  # an unreachable database is infrastructure trouble


class AdmissionConfigError(GpuflowError, ValueError):
    """The admission queue's URL names no supported database."""


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
    async def heartbeat(self, ticket_id: str, ttl_s: float) -> bool:
        """Push the ticket's deadline out; False when it is no longer queued."""

    @abstractmethod
    async def leave(self, ticket_id: str) -> None:
        """Remove the ticket (done, failed or cancelled)."""

    @abstractmethod
    async def entries(self) -> list[QueueEntry]:
        """Every live entry, expired ones dropped first."""


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS gpuflow_admission_ticket (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL UNIQUE,
    pools TEXT NOT NULL,
    slots INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    holder TEXT NOT NULL,
    admitted INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS gpuflow_admission_pool (
    pool TEXT PRIMARY KEY,
    slots INTEGER NOT NULL
);
"""

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

# Pool names are limit names ("gpu", "gpu:h100"); they never contain a newline.
_POOL_SEPARATOR = "\n"


def _entry(row: Any) -> QueueEntry:
    return QueueEntry(
        ticket_id=str(row[0]),
        pools=tuple(str(row[1]).split(_POOL_SEPARATOR)),
        slots=int(row[2]),
        rank=int(row[3]),
        seq=int(row[4]),
        holder=str(row[5]),
        admitted=bool(row[6]),
        expires_at=float(row[7]),
    )


_SELECT_ENTRIES = (
    "SELECT ticket_id, pools, slots, rank, seq, holder, admitted, expires_at "
    "FROM gpuflow_admission_ticket ORDER BY rank, seq"
)


class SqliteAdmissionQueue(AdmissionQueue):
    """The queue in a SQLite file: the embedded default, for the processes of one host
    (SQLite's locking is not safe over NFS: use PostgreSQL when flows run on several hosts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    @property
    def location(self) -> str:
        return f"sqlite:///{self.path}"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        if not self._ready:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SQLITE_SCHEMA)
            self._ready = True
        return connection

    def _transaction(self, work: Any) -> Any:
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result
        finally:
            connection.close()

    async def _run(self, work: Any) -> Any:
        try:
            return await asyncio.to_thread(self._transaction, work)
        except sqlite3.Error as exc:
            raise AdmissionError(f"admission queue {self.location}: {exc}") from exc

    @staticmethod
    def _reap(connection: sqlite3.Connection) -> None:
        connection.execute(
            "DELETE FROM gpuflow_admission_ticket WHERE expires_at < ?", (time.time(),)
        )

    async def enqueue(self, ticket: Ticket, capacity: dict[str, int], ttl_s: float) -> None:
        def work(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "INSERT INTO gpuflow_admission_pool (pool, slots) VALUES (?, ?) "
                "ON CONFLICT (pool) DO UPDATE SET slots = excluded.slots",
                list(capacity.items()),
            )
            connection.execute(
                "INSERT INTO gpuflow_admission_ticket "
                "(ticket_id, pools, slots, rank, holder, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    ticket.ticket_id,
                    _POOL_SEPARATOR.join(ticket.pools),
                    ticket.slots,
                    ticket.rank,
                    ticket.holder,
                    time.time() + ttl_s,
                ),
            )

        await self._run(work)

    async def try_admit(self, ticket_id: str, ttl_s: float) -> bool | None:
        def work(connection: sqlite3.Connection) -> bool | None:
            self._reap(connection)
            renewed = connection.execute(
                "UPDATE gpuflow_admission_ticket SET expires_at = ? WHERE ticket_id = ?",
                (time.time() + ttl_s, ticket_id),
            )
            if renewed.rowcount == 0:
                return None
            entries = [_entry(row) for row in connection.execute(_SELECT_ENTRIES)]
            capacity = dict(connection.execute("SELECT pool, slots FROM gpuflow_admission_pool"))
            if ticket_id not in admissible(entries, capacity):
                return False
            connection.execute(
                "UPDATE gpuflow_admission_ticket SET admitted = 1 WHERE ticket_id = ?",
                (ticket_id,),
            )
            return True

        result: bool | None = await self._run(work)
        return result

    async def heartbeat(self, ticket_id: str, ttl_s: float) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            renewed = connection.execute(
                "UPDATE gpuflow_admission_ticket SET expires_at = ? WHERE ticket_id = ?",
                (time.time() + ttl_s, ticket_id),
            )
            return renewed.rowcount > 0

        alive: bool = await self._run(work)
        return alive

    async def leave(self, ticket_id: str) -> None:
        await self._run(
            lambda connection: connection.execute(
                "DELETE FROM gpuflow_admission_ticket WHERE ticket_id = ?", (ticket_id,)
            )
        )

    async def entries(self) -> list[QueueEntry]:
        def work(connection: sqlite3.Connection) -> list[QueueEntry]:
            self._reap(connection)
            return [_entry(row) for row in connection.execute(_SELECT_ENTRIES)]

        found: list[QueueEntry] = await self._run(work)
        return found


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
        scheme, _, rest = self._dsn.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

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
        return pool

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
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
                _POOL_SEPARATOR.join(ticket.pools),
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
            entries = [_entry(row) for row in await connection.fetch(_SELECT_ENTRIES)]
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
        pool = await self._pool()
        await pool.execute("DELETE FROM gpuflow_admission_ticket WHERE ticket_id = $1", ticket_id)

    async def entries(self) -> list[QueueEntry]:
        async with self._transaction() as connection:
            await self._reap(connection)
            return [_entry(row) for row in await connection.fetch(_SELECT_ENTRIES)]


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


class _Wakeups:
    """Wakes the waiters of this process when a ticket of the same queue leaves, so freed
    slots are taken at once; waiters in other processes notice on their next poll."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextlib.contextmanager
    def register(self, location: str) -> Iterator[asyncio.Event]:
        token = (asyncio.get_running_loop(), asyncio.Event())
        self._waiting.setdefault(location, set()).add(token)
        try:
            yield token[1]
        finally:
            self._waiting[location].discard(token)

    def notify(self, location: str) -> None:
        for loop, event in list(self._waiting.get(location, ())):
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)


_wakeups = _Wakeups()


@contextlib.asynccontextmanager
async def admitted(
    queue: AdmissionQueue,
    ticket: Ticket,
    capacity: dict[str, int],
    ttl_s: float = 30.0,
    poll_s: float = 0.5,
) -> AsyncIterator[float]:
    """Wait in ``queue`` until ``ticket`` is admissible; hold the admission for the body.

    Yields the seconds spent waiting. The ticket leaves the queue on any exit."""
    started = time.monotonic()
    await queue.enqueue(ticket, capacity, ttl_s)
    try:
        with _wakeups.register(queue.location) as wakeup:
            while True:
                wakeup.clear()
                verdict = await queue.try_admit(ticket.ticket_id, ttl_s)
                if verdict:
                    break
                if verdict is None:
                    # Our deadline passed (this process stalled): queue again at the back.
                    logger.warning("Admission ticket %s expired; queueing again", ticket.ticket_id)
                    await queue.enqueue(ticket, capacity, ttl_s)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), poll_s)
        waited = time.monotonic() - started
        heartbeat = asyncio.create_task(_beat(queue, ticket.ticket_id, ttl_s))
        try:
            yield waited
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
    finally:
        # Shielded: a cancelled request must still leave the queue, or it blocks it until
        # its deadline passes.
        await asyncio.shield(_leave(queue, ticket.ticket_id))


async def _leave(queue: AdmissionQueue, ticket_id: str) -> None:
    try:
        await queue.leave(ticket_id)
    except AdmissionError as exc:
        logger.warning("Could not leave the admission queue (%s); the entry expires", exc)
    finally:
        _wakeups.notify(queue.location)


async def _beat(queue: AdmissionQueue, ticket_id: str, ttl_s: float) -> None:
    while True:
        await asyncio.sleep(ttl_s / 3)
        try:
            if not await queue.heartbeat(ticket_id, ttl_s):
                logger.warning(
                    "Admission ticket %s expired while holding GPUs; the Prefect limit "
                    "still caps them, but admission order is lost for this job",
                    ticket_id,
                )
                return
        except AdmissionError as exc:
            logger.warning("Admission heartbeat failed (%s); retrying", exc)
