"""The admission queue in a SQLite file on the NAS: the embedded default (one host)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from gpuflow.gpu.admission.base import (
    POOL_SEPARATOR,
    SELECT_ENTRIES,
    AdmissionError,
    AdmissionQueue,
    entry_from_row,
)
from gpuflow.gpu.admission.policy import QueueEntry, Ticket, admissible

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
                    POOL_SEPARATOR.join(ticket.pools),
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
            entries = [entry_from_row(row) for row in connection.execute(SELECT_ENTRIES)]
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
            return [entry_from_row(row) for row in connection.execute(SELECT_ENTRIES)]

        found: list[QueueEntry] = await self._run(work)
        return found
