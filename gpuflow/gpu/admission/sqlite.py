"""The admission queue in a SQLite file on the NAS: the embedded default (one host).

Decisions are made once per change: enqueue, leave and the reaping of an expired entry
run the decision pass in their own transaction (SQLite has one writer at a time) and mark
every admissible ticket. A waiter is woken once it is admitted: at once when the change
was made in its own process, and within ``CHANGE_POLL_S`` when it was made in another (a
thread watches ``PRAGMA data_version``, which moves on every commit of another connection,
and then reads the queue's admission counter, which moves only when a pass admits; it then
wakes only those of its process's waiters that the pass admitted, read without a lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from gpuflow.gpu.admission.base import (
    POOL_SEPARATOR,
    SELECT_ENTRIES,
    AdmissionError,
    AdmissionQueue,
    HandedLease,
    entry_from_row,
)
from gpuflow.gpu.admission.policy import QueueEntry, Ticket, admissible
from gpuflow.gpu.admission.wakeups import LocalWakeups

CHANGE_POLL_S = 0.025

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS gpuflow_admission_ticket (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL UNIQUE,
    pools TEXT NOT NULL,
    slots INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    holder TEXT NOT NULL,
    admitted INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL,
    handed_lease TEXT,
    handed_lease_valid_until REAL
);
CREATE TABLE IF NOT EXISTS gpuflow_admission_pool (
    pool TEXT PRIMARY KEY,
    slots INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gpuflow_admission_change (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO gpuflow_admission_change (id) VALUES (1);
"""
_BUMP_VERSION = "UPDATE gpuflow_admission_change SET version = version + 1 WHERE id = 1"
# Columns added after the first release: a queue file made by it gets them on first use.
_ADDED_TICKET_COLUMNS = {"handed_lease": "TEXT", "handed_lease_valid_until": "REAL"}


class _NoReceiver(Exception):
    """Rolls a hand-over back: the leave would admit no request that can take the lease."""


class _ChangeWatcher:
    """The waiters of this process on one queue file, and the thread that wakes them when
    another process frees slots (it runs only while someone waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wakeups = LocalWakeups()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        with self._guard:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name=f"admission-watch:{self.path.name}", daemon=True
                )
                self._thread.start()
        yield

    def _admitted_waiters(self, connection: sqlite3.Connection) -> list[str]:
        """This process's waiting tickets that are admitted now (a waiter already woken in
        process by the pass that admitted it is woken again: it only finds itself admitted)."""
        rows = connection.execute(
            "SELECT ticket_id FROM gpuflow_admission_ticket "
            "WHERE admitted AND ticket_id IN (SELECT value FROM json_each(?))",
            (json.dumps(self.wakeups.ticket_ids()),),
        )
        return [row[0] for row in rows]

    def _watch(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            seen_commit: int | None = None
            seen_version: int | None = None
            while True:
                with self._guard:
                    if not len(self.wakeups):
                        self._thread = None
                        return
                try:
                    commit = connection.execute("PRAGMA data_version").fetchone()[0]
                    if commit != seen_commit:
                        seen_commit = commit
                        (version,) = connection.execute(
                            "SELECT version FROM gpuflow_admission_change"
                        ).fetchone()
                        if seen_version is not None and version != seen_version:
                            self.wakeups.wake(self._admitted_waiters(connection))
                        seen_version = version
                except sqlite3.Error:
                    pass  # busy or being created: the waiters' poll interval covers it
                time.sleep(CHANGE_POLL_S)
        finally:
            connection.close()


_WATCHERS: dict[Path, _ChangeWatcher] = {}
_WATCHERS_GUARD = threading.Lock()


def _watcher(path: Path) -> _ChangeWatcher:
    with _WATCHERS_GUARD:
        return _WATCHERS.setdefault(path.resolve(), _ChangeWatcher(path))


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
            self._add_missing_columns(connection)
            self._ready = True
        return connection

    @staticmethod
    def _add_missing_columns(connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")  # one process adds them, the others see them
        present = {
            row[1] for row in connection.execute("PRAGMA table_info(gpuflow_admission_ticket)")
        }
        for column, kind in _ADDED_TICKET_COLUMNS.items():
            if column not in present:
                connection.execute(
                    f"ALTER TABLE gpuflow_admission_ticket ADD COLUMN {column} {kind}"
                )
        connection.execute("COMMIT")

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

    def _decide(self, connection: sqlite3.Connection) -> list[str]:
        """The decision pass, inside the transaction of the change that calls for it (SQLite
        has one writer at a time): reap, mark every admissible ticket, return those."""
        connection.execute(
            "DELETE FROM gpuflow_admission_ticket WHERE expires_at < ?", (time.time(),)
        )
        entries = [entry_from_row(row) for row in connection.execute(SELECT_ENTRIES)]
        capacity = dict(connection.execute("SELECT pool, slots FROM gpuflow_admission_pool"))
        chosen = admissible(entries, capacity)
        newly = [
            entry.ticket_id for entry in entries if not entry.admitted and entry.ticket_id in chosen
        ]
        if newly:
            connection.executemany(
                "UPDATE gpuflow_admission_ticket SET admitted = 1 WHERE ticket_id = ?",
                [(ticket_id,) for ticket_id in newly],
            )
            # The signal the waiters of other processes watch for.
            connection.execute(_BUMP_VERSION)
        return newly

    async def _changed(self, work: Any) -> Any:
        """Run ``work`` and the decision pass in one transaction; wake whom it admitted."""

        def change(connection: sqlite3.Connection) -> tuple[Any, list[str]]:
            result = work(connection)
            return result, self._decide(connection)

        result, newly = await self._run(change)
        _watcher(self.path).wakeups.wake(newly)
        return result

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

        await self._changed(work)

    async def try_admit(self, ticket_id: str, ttl_s: float) -> bool | None:
        def work(connection: sqlite3.Connection) -> bool | None:
            renewed = connection.execute(
                "UPDATE gpuflow_admission_ticket SET expires_at = ? WHERE ticket_id = ?",
                (time.time() + ttl_s, ticket_id),
            )
            if renewed.rowcount == 0:
                return None
            # An entry past its deadline is a change nobody decided on yet.
            if connection.execute(
                "SELECT 1 FROM gpuflow_admission_ticket WHERE expires_at < ? LIMIT 1",
                (time.time(),),
            ).fetchone():
                self._decide(connection)
            row = connection.execute(
                "SELECT admitted FROM gpuflow_admission_ticket WHERE ticket_id = ?", (ticket_id,)
            ).fetchone()
            return bool(row[0])

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

    @contextlib.asynccontextmanager
    async def wakeup(self, ticket_id: str) -> AsyncIterator[asyncio.Event]:
        watcher = _watcher(self.path)
        with watcher.wakeups.register(ticket_id) as event, watcher.watching():
            yield event

    async def leave(self, ticket_id: str) -> None:
        await self._changed(
            lambda connection: connection.execute(
                "DELETE FROM gpuflow_admission_ticket WHERE ticket_id = ?", (ticket_id,)
            )
        )

    async def hand_over(self, ticket_id: str, lease: HandedLease) -> str | None:
        def work(connection: sqlite3.Connection) -> tuple[str, list[str]]:
            left = connection.execute(
                "SELECT pools, slots FROM gpuflow_admission_ticket "
                "WHERE ticket_id = ? AND admitted",
                (ticket_id,),
            ).fetchone()
            if left is None:
                raise _NoReceiver
            connection.execute(
                "DELETE FROM gpuflow_admission_ticket WHERE ticket_id = ?", (ticket_id,)
            )
            newly = self._decide(connection)
            # The first admitted (in queue order) that wants what the lease holds.
            receiver = connection.execute(
                "SELECT ticket_id FROM gpuflow_admission_ticket WHERE ticket_id IN "
                "(SELECT value FROM json_each(?)) AND pools = ? AND slots = ? "
                "ORDER BY rank, seq LIMIT 1",
                (json.dumps(newly), left[0], left[1]),
            ).fetchone()
            if receiver is None:
                raise _NoReceiver
            connection.execute(
                "UPDATE gpuflow_admission_ticket SET handed_lease = ?, "
                "handed_lease_valid_until = ? WHERE ticket_id = ?",
                (lease.lease_id, lease.valid_until, receiver[0]),
            )
            return receiver[0], newly

        try:
            receiver, newly = await self._run(work)
        except _NoReceiver:
            return None
        _watcher(self.path).wakeups.wake(newly)
        return str(receiver)

    async def handed_lease(self, ticket_id: str) -> HandedLease | None:
        def work(connection: sqlite3.Connection) -> HandedLease | None:
            row = connection.execute(
                "SELECT handed_lease, handed_lease_valid_until FROM gpuflow_admission_ticket "
                "WHERE ticket_id = ? AND handed_lease IS NOT NULL",
                (ticket_id,),
            ).fetchone()
            return None if row is None else HandedLease(str(row[0]), float(row[1]))

        handed: HandedLease | None = await self._run(work)
        return handed

    async def entries(self) -> list[QueueEntry]:
        def work(connection: sqlite3.Connection) -> list[QueueEntry]:
            rows = connection.execute(
                SELECT_ENTRIES.replace("ORDER BY", "WHERE expires_at >= ? ORDER BY"),
                (time.time(),),
            )
            return [entry_from_row(row) for row in rows]

        found: list[QueueEntry] = await self._run(work)
        return found
