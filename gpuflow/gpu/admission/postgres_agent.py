"""The connections of one process to the PostgreSQL admission queue, within a fixed budget,
and the waiting it does for all the process's tickets.

Whatever the number of runs (tickets) in a process, it holds at most ``POOL_SIZE`` pooled
connections plus one that ``LISTEN``s for admissions. One pooled connection serves the
changes (enqueue, leave, reads); the other the decision passes and the batches of checks
and renewals (one of each at a time), so neither a renewal nor a pass ever queues behind
a burst of enqueues, and a leave never waits for a pass. The checks of all its tickets are
batched: those that arrive within ``BATCH_WINDOW_S`` (or while a batch is in flight) go to
the database as one statement.

The agent carries the waiting: it renews the deadline of every entry of the process
(waiting or holding) in one statement once a third of its ttl has passed, and while
tickets wait it asks once per ``KEEPALIVE_TICK_S`` whether a decision pass is owed (an
expired entry, or a change not yet decided). So while ``LISTEN`` is up a waiter sleeps
until it is notified, found gone, or the ``LISTEN`` connection is lost; only then does it
poll, and the agent listens again.

Through PgBouncer in transaction mode (the URL's ``pgbouncer_listen_database`` names
PgBouncer's session-mode alias of the same database, see docs/gpu-admission.md), the pool
runs without prepared-statement cache (``statement_cache_size=0``, what asyncpg needs
there) and ``LISTEN`` goes through the session alias, whose pool size bounds the host's
listeners: a process that finds it full polls until a session frees.

The connections are closed when their event loop shuts down (``asyncio.run`` ends, or
whoever owns the loop calls ``shutdown_asyncgens``); those of a loop closed without that
are dropped when the next agent is made, or at process exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gpuflow.core.redaction import redacted_url
from gpuflow.gpu.admission.base import AdmissionConfigError, AdmissionError
from gpuflow.gpu.admission.wakeups import LocalWakeups

logger = logging.getLogger(__name__)

POOL_SIZE = 2
CONNECTIONS_PER_PROCESS = POOL_SIZE + 1  # the pool, and the LISTEN connection
BATCH_WINDOW_S = 0.01
CLOSE_TIMEOUT_S = 5.0  # a graceful close that takes longer is cut short
APPLICATION_NAME = "gpuflow-admission"
LISTEN_DATABASE_PARAMETER = "pgbouncer_listen_database"
LISTEN_CONNECT_TIMEOUT_S = 10.0
LISTEN_FIRST_WAIT_S = 1.0  # how long the first waiter waits for LISTEN before polling
LISTEN_RETRY_S = 5.0  # after LISTEN failed, waiters poll at least this long before a retry
# While tickets wait: how often the process asks whether a pass is owed (one statement,
# whatever their number), and looks at its LISTEN connection.
KEEPALIVE_TICK_S = 0.5
# An entry is renewed once this share of its ttl has passed: two thirds stay as margin
# for a slow batch or a loaded host.
RENEW_AFTER_TTL_SHARE = 1 / 3

# (ticket id, ttl, renew) of each ticket in a batch -> admitted flag of each ticket found,
# and whether a decision pass is due.
CheckBatch = Callable[
    [asyncpg.Connection, list[tuple[str, float, bool]]], Awaitable[tuple[dict[str, bool], bool]]
]
# Runs one decision pass if it wins the try-lock; False when another process holds it.
DecisionPass = Callable[[asyncpg.Connection], Awaitable[bool]]
# True when a change (or an expired entry) waits for a decision pass.
PassDue = Callable[[asyncpg.Connection], Awaitable[bool]]


@dataclass
class _Live:
    """An entry of this process that the agent keeps renewed until it leaves."""

    ttl_s: float
    renewed_at: float  # monotonic, taken before the database set the deadline
    renewing: bool = False

    def renewal_due_at(self) -> float:
        return self.renewed_at + self.ttl_s * RENEW_AFTER_TTL_SHARE


@dataclass(frozen=True)
class QueueConnections:
    """Where the pool and the ``LISTEN`` connection go, and how the pool prepares."""

    pooled_dsn: str
    listen_dsn: str
    statement_cache_size: int | None  # None: asyncpg's default

    @classmethod
    def from_url(cls, dsn: str) -> QueueConnections:
        """Direct to PostgreSQL, or through PgBouncer when the URL names its listen alias."""
        try:
            parts = urlsplit(dsn)
            query = parse_qsl(parts.query, keep_blank_values=True)
        except ValueError:
            return cls(dsn, dsn, None)  # the driver's own error says more, redacted
        listen = [value for key, value in query if key == LISTEN_DATABASE_PARAMETER]
        if not listen:
            return cls(dsn, dsn, None)
        if len(listen) > 1 or not listen[0] or "/" in listen[0]:
            raise AdmissionConfigError(
                f"the admission queue URL {redacted_url(dsn)}: {LISTEN_DATABASE_PARAMETER}="
                f"{listen[-1]!r} must name one database alias of PgBouncer (session mode)"
            )
        rest = urlencode([(key, value) for key, value in query if key != LISTEN_DATABASE_PARAMETER])
        pooled = urlunsplit(parts._replace(query=rest))
        listen_dsn = urlunsplit(parts._replace(path=f"/{listen[0]}", query=rest))
        return cls(pooled, listen_dsn, 0)


@dataclass(frozen=True)
class QueueStatements:
    """What the agent runs against the queue's tables (the queue module owns the SQL)."""

    prepare: Callable[[asyncpg.Connection], Awaitable[None]]  # schema, once per pool
    check_batch: CheckBatch
    decide: DecisionPass
    pass_due: PassDue
    channel: str


class PostgresAgent:
    """The process's side of one queue database (one per event loop: asyncpg connections
    cannot cross loops)."""

    def __init__(self, dsn: str, statements: QueueStatements) -> None:
        self._connections = QueueConnections.from_url(dsn)
        self._dsn = self._connections.pooled_dsn
        self._statements = statements
        self.location = redacted_url(dsn)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self._listening: asyncio.Task[None] | None = None
        self._listen_failing = False
        self._listen_retry_at = 0.0
        self._wakeups = LocalWakeups()
        # One pooled connection each (POOL_SIZE): changes, and the passes and batches
        # (which run one at a time each), so neither lane ever waits behind the other.
        self._changes = asyncio.Semaphore(1)
        self._deciding = asyncio.Semaphore(1)
        self._pending: dict[str, asyncio.Future[bool | None]] = {}
        self._renewals: dict[str, _Live] = {}
        self._probe_wanted = False
        self._flusher: asyncio.Task[None] | None = None
        self._pass_wanted = False
        self._passes: asyncio.Task[None] | None = None
        self._live: dict[str, _Live] = {}
        self._keeping: asyncio.Task[None] | None = None
        # Every connection this agent opened, so that one on a closed loop can be dropped.
        self._opened: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()

    @contextlib.asynccontextmanager
    async def unreachable_as_admission_error(self) -> AsyncIterator[None]:
        """A dropped connection or a database that is down is an ``AdmissionError``, which
        waiting rides out, never a bare ``ConnectionError`` that would fail the run."""
        try:
            yield
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise AdmissionError(
                f"the admission queue {self.location} failed: {type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for a change or a read."""
        async with self._changes, self._pooled() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _deciding_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for a decision pass or a batch."""
        async with self._deciding, self._pooled() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _pooled(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.unreachable_as_admission_error():
            pool = await self._ready_pool()
            async with pool.acquire() as connection:
                yield connection

    async def _ready_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await self._create_pool()
            return self._pool

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POOL_SIZE,
                server_settings={"application_name": APPLICATION_NAME},
                init=self._opened_connection,
                **self._cache_setting(),
            )
            async with pool.acquire() as connection:
                await self._statements.prepare(connection)
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

    def _cache_setting(self) -> dict[str, int]:
        size = self._connections.statement_cache_size
        return {} if size is None else {"statement_cache_size": size}

    async def _opened_connection(self, connection: asyncpg.Connection) -> None:
        self._opened.add(connection)

    async def close(self) -> None:
        """Close the pool and the LISTEN connection (on their own loop)."""
        for task in (self._flusher, self._passes, self._listening, self._keeping):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), CLOSE_TIMEOUT_S)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except Exception:  # a connection still busy, or the server gone: cut it
                pool.terminate()
        self.drop()

    def drop(self) -> None:
        """Cut every connection at once, without a loop to run on (its loop has closed)."""
        for connection in list(self._opened):
            # On a closed loop the transport is closed before the loop refuses the callback.
            with contextlib.suppress(RuntimeError):
                connection.terminate()
        self._opened = weakref.WeakSet()

    # Wake-ups -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def wakeup(self, ticket_id: str) -> AsyncIterator[asyncio.Event]:
        await self._ensure_listener()
        with self._wakeups.register(ticket_id) as event:
            yield event

    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    def _on_listener_lost(self, _connection: object) -> None:
        """The LISTEN connection closed: notifications may have been missed, so every
        waiter checks now and polls until the agent listens again."""
        self._listener = None
        self._wakeups.wake(self._wakeups.ticket_ids())

    async def _ensure_listener(self) -> None:
        """LISTEN on the queue's channel, set up in the background; the waiter that starts
        it waits for it briefly. Without it (database unreachable, or PgBouncer's session
        pool full) waiters fall back to their poll interval, and the agent tries again
        (``_listen_again``)."""
        if self.listening() or time.monotonic() < self._listen_retry_at:
            return
        if self._listening is not None and not self._listening.done():
            return
        self._listening = asyncio.create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._listening), LISTEN_FIRST_WAIT_S)

    async def _listen(self) -> None:
        listener: asyncpg.Connection | None = None
        try:
            listener = await asyncpg.connect(
                self._connections.listen_dsn,
                server_settings={"application_name": APPLICATION_NAME},
                timeout=LISTEN_CONNECT_TIMEOUT_S,
                **self._cache_setting(),
            )
            self._opened.add(listener)
            # Through PgBouncer this waits until its session pool has a connection for us.
            await listener.add_listener(self._statements.channel, self._on_notify)
            listener.add_termination_listener(self._on_listener_lost)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Tried again every tick while tickets wait: said once per outage.
            if not self._listen_failing:
                logger.warning(
                    "Cannot LISTEN on the admission queue %s (%s); polling", self.location, exc
                )
            self._listen_failing = True
            self._listen_retry_at = time.monotonic() + LISTEN_RETRY_S
            if listener is not None:
                listener.terminate()
            return
        except asyncio.CancelledError:
            if listener is not None:
                listener.terminate()
            raise
        self._listener = listener
        self._listen_failing = False
        # A waiter that checked before LISTEN was up may have missed its admission, and
        # would now sleep without polling: every waiter checks once more.
        self._wakeups.wake(self._wakeups.ticket_ids())

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._wakeups.wake(payload.split(","))

    # Renewals, checks and the owed-pass probe, batched -------------------------------

    def track(self, ticket_id: str, ttl_s: float, enqueued_at: float) -> None:
        """Keep ``ticket_id`` renewed from now on (``enqueued_at``: monotonic, taken before
        its deadline was set) until it leaves or is found gone."""
        self._live[ticket_id] = _Live(ttl_s, enqueued_at)
        if self._keeping is None or self._keeping.done():
            self._keeping = asyncio.create_task(self._keep_alive())

    def forget(self, ticket_id: str) -> None:
        self._live.pop(ticket_id, None)

    def still_queued(self, ticket_id: str) -> bool:
        """False once a renewal found the entry gone (its deadline passed: this process
        stalled, or the database was out of reach for longer than the ttl)."""
        return ticket_id in self._live

    async def check(self, ticket_id: str) -> bool | None:
        """The ticket's admitted flag (``None``: no longer queued)."""
        future = self._pending.get(ticket_id)
        if future is None:
            future = self._pending[ticket_id] = asyncio.get_running_loop().create_future()
            # Every waiter on it may have been cancelled: its error is then nobody's.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._start_flush()
        # Shielded: one cancelled waiter must not cancel the answer others share.
        return await asyncio.shield(future)

    async def _keep_alive(self) -> None:
        """Renew the entries that are due, and probe for an owed pass while tickets wait:
        a batch per tick for the whole process, never a statement per ticket."""
        while self._live:
            now = time.monotonic()
            idle = [live for live in self._live.values() if not live.renewing]
            next_due = min((live.renewal_due_at() for live in idle), default=now + KEEPALIVE_TICK_S)
            if len(self._wakeups):
                next_due = min(next_due, now + KEEPALIVE_TICK_S)
            await asyncio.sleep(max(next_due - time.monotonic(), BATCH_WINDOW_S))
            now = time.monotonic()
            for ticket, live in self._live.items():
                if not live.renewing and now >= live.renewal_due_at():
                    live.renewing = True
                    self._renewals[ticket] = live
            if len(self._wakeups):
                self._probe_wanted = True
                self._listen_again()
            if self._renewals or self._probe_wanted:
                self._start_flush()

    def _listen_again(self) -> None:
        """Waiters poll while the LISTEN connection is down: set it up again."""
        if self.listening() or time.monotonic() < self._listen_retry_at:
            return
        if self._listening is None or self._listening.done():
            self._listening = asyncio.create_task(self._listen())

    def _start_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending or self._renewals or self._probe_wanted:
            await asyncio.sleep(BATCH_WINDOW_S)
            checks, self._pending = self._pending, {}
            renewals, self._renewals = self._renewals, {}
            self._probe_wanted = False
            rows = [(ticket, live.ttl_s, True) for ticket, live in renewals.items()]
            rows += [(ticket, 0.0, False) for ticket in checks if ticket not in renewals]
            started = time.monotonic()
            try:
                async with self._deciding_connection() as connection:
                    if rows:
                        found, due = await self._statements.check_batch(connection, rows)
                    else:
                        found, due = {}, await self._statements.pass_due(connection)
            except AdmissionError as exc:
                for future in checks.values():
                    if not future.done():
                        future.set_exception(exc)
                if renewals:
                    logger.warning(
                        "Renewing %d admission entries failed (%s); retrying", len(renewals), exc
                    )
                for live in renewals.values():
                    live.renewing = False  # due still: the next tick tries again
                continue
            self._renewed(renewals, found, started)
            for ticket, future in checks.items():
                if not future.done():
                    future.set_result(found.get(ticket))
            if due:
                self.request_pass()

    def _renewed(self, renewals: dict[str, _Live], found: dict[str, bool], started: float) -> None:
        gone: list[str] = []
        for ticket, live in renewals.items():
            live.renewing = False
            if self._live.get(ticket) is not live:
                continue  # it left (or queued again) while the batch ran
            if ticket in found:
                live.renewed_at = started
            else:
                del self._live[ticket]
                gone.append(ticket)
        # Their waiters check, find the entry gone and queue again.
        self._wakeups.wake(gone)

    # Decision passes ------------------------------------------------------------------

    def request_pass(self) -> None:
        """Run a decision pass soon; requests made while one runs fold into the next."""
        self._pass_wanted = True
        if self._passes is None or self._passes.done():
            self._passes = asyncio.create_task(self._run_passes())

    async def _run_passes(self) -> None:
        while self._pass_wanted:
            self._pass_wanted = False
            try:
                async with self._deciding_connection() as connection:
                    # A lost try-lock is no loss: its winner checks for changes after it
                    # commits, ours included (committed before we asked).
                    if await self._statements.decide(connection) and (
                        await self._statements.pass_due(connection)
                    ):
                        self._pass_wanted = True
            except AdmissionError as exc:
                # The waiters' next poll finds the pass still due and asks again.
                logger.warning("Admission decision pass failed: %s", exc)
                return


class _LoopAgents:
    """The agents of one event loop, closed when it shuts down."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.agents: dict[str, PostgresAgent] = {}
        # asyncio.run (and every loop owner that calls shutdown_asyncgens) closes the async
        # generators first iterated in its loop, each on that loop: this one closes the
        # agents there. The loop keeps only a weak reference to it: we keep the strong one.
        self._closer = self._close_at_shutdown()
        self._started = asyncio.ensure_future(self._closer.__anext__())

    async def _close_at_shutdown(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with _REGISTRY_GUARD:
                _LOOPS.pop(self.loop, None)
            for agent in list(self.agents.values()):
                await agent.close()

    def drop(self) -> None:
        for agent in self.agents.values():
            agent.drop()


# Keyed by loop id: a loop's agents hold the loop (their connections do), so a weak key
# would never let go; entries leave at the loop's shutdown, or when found closed.
_LOOPS: dict[asyncio.AbstractEventLoop, _LoopAgents] = {}
_REGISTRY_GUARD = threading.Lock()


def agent_for(dsn: str, statements: QueueStatements) -> PostgresAgent:
    """The agent of this event loop for ``dsn`` (created on first use)."""
    loop = asyncio.get_running_loop()
    with _REGISTRY_GUARD:
        closed = [stale for known, stale in _LOOPS.items() if known.is_closed()]
        for stale in closed:
            del _LOOPS[stale.loop]
        if loop not in _LOOPS:
            _LOOPS[loop] = _LoopAgents(loop)
        loop_agents = _LOOPS[loop]
    for stale in closed:
        stale.drop()
    agent = loop_agents.agents.get(dsn)
    if agent is None:
        agent = loop_agents.agents[dsn] = PostgresAgent(dsn, statements)
    return agent


@atexit.register
def _close_all_at_exit() -> None:
    """Loops still open at exit: close their agents on their own loop when it still runs
    (a loop in another thread), and cut the connections of the others."""
    with _REGISTRY_GUARD:
        remaining = list(_LOOPS.values())
        _LOOPS.clear()
    for loop_agents in remaining:
        if loop_agents.loop.is_running() and not loop_agents.loop.is_closed():
            with contextlib.suppress(Exception):
                closing = asyncio.run_coroutine_threadsafe(
                    _close_agents(loop_agents), loop_agents.loop
                )
                closing.result(CLOSE_TIMEOUT_S)
                continue
        loop_agents.drop()


async def _close_agents(loop_agents: _LoopAgents) -> None:
    for agent in list(loop_agents.agents.values()):
        await agent.close()
