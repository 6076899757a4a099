"""Benchmark: the PostgreSQL admission queue at production scale, the current design beside
the old one (a full decision pass under a blocking lock on every poll), in the same run.

For each number of waiters N: a fresh database; H holders admitted (the pool has exactly
H slots), then N waiters queued (priorities mixed), all as asyncio tasks spread over a few
processes (as flows in separate pods would be). During a window of W seconds the holders
give their slots back at a steady rate; each freed slot should go to the next waiter in
priority-then-arrival order, at once. Printed per design and N:

- pass p50/p99 and passes/s: decision passes (current: one per change, by the try-lock
  winner; old: every poll of every waiter);
- checks/s and check gap p50: waiters' checks of their own entry per second, and the time
  between one waiter's consecutive checks (its enqueue counting as the first); ``--``
  when no waiter checked twice in the window (the current design's waiters sleep on
  LISTEN until they are admitted);
- renew age max: the oldest deadline renewal of any live entry, sampled from the table
  every 0.5 s (ttl minus the time it has left): an entry expires when it reaches the ttl;
- expired: waiters whose entry expired under load and queued again at the back;
- order: admissions that overtook a waiter ahead in priority-then-arrival order (checked
  against the queue's rows at the end of the window);
- freed -> taken p50/p99: the k-th release (a holder's job ends; it then leaves the queue)
  to the k-th admission;
- stmts/s: statements the queue's clients sent per second (counted by asyncpg's query
  logger on every pooled connection), xact/s: committed database transactions per
  second (pg_stat_database);
- conns: peak connections to the database (pg_stat_activity).

    uv run python benchmarks/admission_scale.py [--waiters 100,500,2000,5000]
        [--holders 1000] [--window 35] [--processes 4] [--release-rate 20]
        [--designs current,old] [--postgres postgres@127.0.0.1:5432]

The window (35 s by default) is a little longer than the production ttl (30 s) so that
every entry has had to renew at least once; the issue's own table used 60 s windows.
Production defaults otherwise: ttl 30 s, poll fallback 0.5 s.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from legacy_admission import LegacyPostgresQueue, PollRecorder

from gpuflow.core.request import Priority
from gpuflow.gpu.admission.policy import Ticket
from gpuflow.gpu.admission.postgres import STATEMENTS, PostgresAdmissionQueue
from gpuflow.gpu.admission.postgres_agent import PostgresAgent, QueueStatements
from gpuflow.gpu.admission.waiting import admitted

TTL_S = 30.0
POLL_S = 0.5
POOL = "gpu"
PRIORITIES = [Priority.BATCH, Priority.NORMAL, Priority.HIGH]


@dataclasses.dataclass
class Figures:
    """What one worker process measured."""

    releases: list[float] = dataclasses.field(default_factory=list)
    admissions: list[float] = dataclasses.field(default_factory=list)
    passes: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # start, took
    checks: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    expired: int = 0
    statements: int = 0  # sent during the window


class _ExpiryCounter(logging.Handler):
    def __init__(self, figures: Figures) -> None:
        super().__init__()
        self.figures = figures

    def emit(self, record: logging.LogRecord) -> None:
        if "expired; queueing again" in record.getMessage():
            self.figures.expired += 1


class StatementCounter:
    """Counts the statements sent on the connections it is attached to."""

    def __init__(self) -> None:
        self.sent = 0

    def attach(self, connection: asyncpg.Connection) -> None:
        connection.add_query_logger(self._count)

    def _count(self, _query: object) -> None:
        self.sent += 1


class CountingAgent(PostgresAgent):
    """The process's agent, its pooled connections' statements counted."""

    def __init__(self, dsn: str, statements: QueueStatements, counter: StatementCounter) -> None:
        super().__init__(dsn, statements)
        self.counter = counter

    async def _opened_connection(self, connection: asyncpg.Connection) -> None:
        await super()._opened_connection(connection)
        self.counter.attach(connection)


class MeasuredQueue(PostgresAdmissionQueue):
    """The current queue, with its checks, decision passes and statements counted
    (nothing else changed)."""

    def __init__(self, dsn: str, figures: Figures, expected_tickets: int) -> None:
        super().__init__(dsn)
        self.figures = figures
        self.expected_tickets = expected_tickets
        self.everyone_checked = asyncio.Event()  # each ticket checked at least once
        self.statements = StatementCounter()
        self._measured_agent: CountingAgent | None = None
        decide = STATEMENTS.decide

        async def timed_decide(connection: asyncpg.Connection) -> bool:
            started = time.monotonic()
            won = await decide(connection)
            if won:
                figures.passes.append((time.time(), time.monotonic() - started))
            return won

        self._statements = dataclasses.replace(STATEMENTS, decide=timed_decide)

    def _agent(self) -> PostgresAgent:
        # One agent, as agent_for would give this worker's single loop; closed by the worker.
        if self._measured_agent is None:
            self._measured_agent = CountingAgent(self._dsn, self._statements, self.statements)
        return self._measured_agent

    async def close(self) -> None:
        if self._measured_agent is not None:
            await self._measured_agent.close()

    async def try_admit(self, ticket_id: str, ttl_s: float) -> bool | None:
        self.figures.checks.setdefault(ticket_id, []).append(time.time())
        if len(self.figures.checks) >= self.expected_tickets:
            self.everyone_checked.set()
        return await super().try_admit(ticket_id, ttl_s)


async def _barrier(barrier: Barrier) -> None:
    await asyncio.to_thread(barrier.wait)


async def _current_worker(
    dsn: str, holders: int, waiters: list[Ticket], args: argparse.Namespace, barrier: Barrier
) -> Figures:
    figures = Figures()
    logging.getLogger("gpuflow.gpu.admission.waiting").addHandler(_ExpiryCounter(figures))
    queue = MeasuredQueue(dsn, figures, holders + len(waiters))
    capacity = {POOL: args.holders}
    releases = [asyncio.Event() for _ in range(holders)]
    everyone_admitted = asyncio.Event()
    count = 0

    async def hold(number: int) -> None:
        nonlocal count
        ticket = Ticket((POOL,), 1, Priority.HIGH, holder=f"holder-{number}")
        async with admitted(queue, ticket, capacity, TTL_S, POLL_S):
            count += 1
            if count == holders:
                everyone_admitted.set()
            await releases[number].wait()
            # The job ends: from here on its slot should pass on (leaving the queue included).
            figures.releases.append(time.time())

    async def wait(ticket: Ticket, stop: asyncio.Event) -> None:
        async with admitted(queue, ticket, capacity, TTL_S, POLL_S):
            figures.admissions.append(time.time())
            await stop.wait()

    holding = [asyncio.create_task(hold(number)) for number in range(holders)]
    await everyone_admitted.wait()
    await _barrier(barrier)  # every holder admitted, everywhere
    stop = asyncio.Event()
    waiting = [asyncio.create_task(wait(ticket, stop)) for ticket in waiters]
    await queue.everyone_checked.wait()  # every waiter queued and checked once
    await _barrier(barrier)  # the window starts
    sent_before = queue.statements.sent
    await _release_steadily(releases, args)
    figures.statements = queue.statements.sent - sent_before
    await _barrier(barrier)  # the window ends: the parent reads the queue
    await _barrier(barrier)
    stop.set()
    for release in releases:
        release.set()
    await asyncio.gather(*holding, *waiting)
    await queue.close()
    return figures


async def _release_steadily(releases: list[asyncio.Event], args: argparse.Namespace) -> None:
    every_s = args.processes / args.release_rate
    ends = time.monotonic() + args.window
    for release in releases:
        if time.monotonic() + every_s > ends:
            break
        await asyncio.sleep(every_s)
        release.set()
    await asyncio.sleep(max(ends - time.monotonic(), 0))


async def _old_worker(
    dsn: str, holders: int, waiters: list[Ticket], args: argparse.Namespace, barrier: Barrier
) -> Figures:
    figures = Figures()
    polls = PollRecorder()
    statements = StatementCounter()
    queue = await LegacyPostgresQueue.open(dsn, on_connection=statements.attach)
    capacity = {POOL: args.holders}
    left = asyncio.Event()  # the old in-process wake-up: any leave wakes every waiter here
    releases = [asyncio.Event() for _ in range(holders)]
    holders_in = asyncio.Semaphore(0)

    async def beat(ticket: Ticket) -> None:
        while True:
            await asyncio.sleep(TTL_S / 3)
            await queue.heartbeat(ticket.ticket_id, TTL_S)

    async def admit(ticket: Ticket) -> asyncio.Task[None]:
        await queue.wait(ticket, capacity, TTL_S, POLL_S, left, polls)
        return asyncio.create_task(beat(ticket))

    async def hold(number: int) -> None:
        ticket = Ticket((POOL,), 1, Priority.HIGH, holder=f"holder-{number}")
        await queue.enqueue(ticket, capacity, TTL_S)
        beating = await admit(ticket)
        holders_in.release()
        await releases[number].wait()
        figures.releases.append(time.time())
        beating.cancel()
        await queue.leave(ticket.ticket_id)
        left.set()

    async def wait(ticket: Ticket, stop: asyncio.Event) -> None:
        beating = await admit(ticket)
        try:
            figures.admissions.append(time.time())
            await stop.wait()
        finally:
            beating.cancel()  # also when cancelled at the end: the pool closes next
        await queue.leave(ticket.ticket_id)

    holding = [asyncio.create_task(hold(number)) for number in range(holders)]
    for _ in range(holders):
        await holders_in.acquire()
    await _barrier(barrier)
    for ticket in waiters:
        await queue.enqueue(ticket, capacity, TTL_S)
        # Its arrival: the first point of its check gaps (the old waiter polls only once
        # the window starts, and may be admitted at its first poll).
        figures.checks[ticket.ticket_id] = [time.time()]
    await _barrier(barrier)  # every waiter queued, everywhere: the window starts
    stop = asyncio.Event()
    polls.polls.clear()
    waiting = [asyncio.create_task(wait(ticket, stop)) for ticket in waiters]
    sent_before = statements.sent
    await _release_steadily(releases, args)
    figures.statements = statements.sent - sent_before
    await _barrier(barrier)
    await _barrier(barrier)
    stop.set()
    for release in releases:
        release.set()
    for task in waiting:
        task.cancel()
    await asyncio.gather(*holding, *waiting, return_exceptions=True)
    for ticket_id, started, _took, verdict in polls.polls:
        figures.checks.setdefault(ticket_id, []).append(started)
        figures.expired += verdict is None
    figures.passes = queue.passes
    await queue.pool.close()
    return figures


Worker = Callable[
    [str, int, list[Ticket], argparse.Namespace, Barrier], Coroutine[Any, Any, Figures]
]
WORKERS: dict[str, Worker] = {"current": _current_worker, "old": _old_worker}


def _worker_main(
    design: str,
    dsn: str,
    holders: int,
    waiters: list[Ticket],
    args: argparse.Namespace,
    barrier: Barrier,
    results: "multiprocessing.Queue[Figures]",
) -> None:
    results.put(asyncio.run(WORKERS[design](dsn, holders, waiters, args, barrier)))


async def _database_figures(dsn: str) -> tuple[int, int, float]:
    """Committed transactions so far, connections now, and the age of the oldest renewal
    of a live entry (every entry has the benchmark's ttl)."""
    connection = await asyncpg.connect(dsn)
    try:
        commits = await connection.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        connections = await connection.fetchval(
            "SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()"
        )
        oldest_renewal = await connection.fetchval(
            "SELECT max(EXTRACT(EPOCH FROM clock_timestamp()) + $1 - expires_at) "
            "FROM gpuflow_admission_ticket",
            TTL_S,
        )
        return int(commits), int(connections), float(oldest_renewal or 0.0)
    finally:
        await connection.close()


async def _queue_rows(dsn: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(
            await connection.fetch(
                "SELECT holder, rank, seq, admitted FROM gpuflow_admission_ticket "
                "WHERE expires_at >= EXTRACT(EPOCH FROM clock_timestamp())"
            )
        )
    finally:
        await connection.close()


def _overtaken(rows: list[asyncpg.Record], arrival: dict[str, int], capacity: int) -> int:
    """Admitted waiters that overtook one still waiting for lack of a slot.

    Order is priority, then first arrival (a waiter that expired and queued again keeps
    its first arrival here, so the place it lost counts). Waiting entries that fit in the
    free slots now are only late to look (the old design admits at each waiter's own
    poll); the first waiting entry beyond them is the real head of the queue."""
    key = {row["holder"]: (row["rank"], arrival.get(row["holder"], row["seq"])) for row in rows}
    free = capacity - sum(1 for row in rows if row["admitted"])
    waiting = sorted(key[row["holder"]] for row in rows if not row["admitted"])[max(free, 0) :]
    if not waiting:
        return 0
    head = waiting[0]
    return sum(
        1
        for row in rows
        if row["admitted"] and row["holder"].startswith("waiter-") and key[row["holder"]] > head
    )


def _run_once(design: str, dsn: str, waiters: int, args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(args.processes + 1)
    results: multiprocessing.Queue[Figures] = context.Queue()
    tickets = [
        Ticket((POOL,), 1, PRIORITIES[number % 3], holder=f"waiter-{number:05d}")
        for number in range(waiters)
    ]
    workers = [
        context.Process(
            target=_worker_main,
            args=(
                design,
                dsn,
                args.holders // args.processes,
                tickets[index :: args.processes],
                args,
                barrier,
                results,
            ),
        )
        for index in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    barrier.wait()  # holders in
    barrier.wait()  # waiters queued: the window starts
    # Arrival as the queue recorded it (the processes queue their shares concurrently).
    arrival = {
        row["holder"]: row["seq"]
        for row in asyncio.run(_queue_rows(dsn))
        if row["holder"].startswith("waiter-")
    }
    commits_before, _, _ = asyncio.run(_database_figures(dsn))
    window_started = time.time()
    peak_connections = 0
    oldest_renewal = 0.0
    while time.time() < window_started + args.window - 0.5:
        _, connections, renewal_age = asyncio.run(_database_figures(dsn))
        peak_connections = max(peak_connections, connections)
        oldest_renewal = max(oldest_renewal, renewal_age)
        time.sleep(0.5)
    barrier.wait()  # the window ends
    commits_after, _, _ = asyncio.run(_database_figures(dsn))
    window_s = time.time() - window_started
    rows = asyncio.run(_queue_rows(dsn))
    barrier.wait()
    figures = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=120)
    return _summary(figures, rows, arrival, window_started, window_s, args) | {
        "renew age max": oldest_renewal,
        "stmts/s": sum(part.statements for part in figures) / args.window,
        "xact/s": (commits_after - commits_before) / window_s,
        "conns": peak_connections,
    }


def _summary(
    figures: list[Figures],
    rows: list[asyncpg.Record],
    arrival: dict[str, int],
    window_started: float,
    window_s: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    window_ends = window_started + window_s
    passes = [took for part in figures for at, took in part.passes if at >= window_started]
    # A gap counts where the check that ends it falls in the window.
    gaps = [
        later - earlier
        for part in figures
        for times in part.checks.values()
        for earlier, later in itertools.pairwise(times)
        if window_started <= later <= window_ends
    ]
    checks = sum(
        window_started <= at <= window_ends
        for part in figures
        for times in part.checks.values()
        for at in times
    )
    releases = sorted(
        t for part in figures for t in part.releases if window_started <= t <= window_ends
    )
    admissions = sorted(
        t for part in figures for t in part.admissions if window_started <= t <= window_ends
    )
    taken = [max(admit - freed, 0.0) for freed, admit in zip(releases, admissions, strict=False)]
    return {
        "pass p50": _quantile(passes, 0.5),
        "pass p99": _quantile(passes, 0.99),
        "passes/s": len(passes) / window_s,
        "checks/s": checks / window_s,
        "check gap p50": _quantile(gaps, 0.5),
        "expired": sum(part.expired for part in figures),
        "overtaken": _overtaken(rows, arrival, args.holders),
        "freed": len(releases),
        "taken": len(admissions),
        "taken p50": _quantile(taken, 0.5),
        "taken p99": _quantile(taken, 0.99),
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(int(q * 100) - 1, 0)]


async def _admin(server: str, statement: str) -> None:
    connection = await asyncpg.connect(f"postgresql://{server}/postgres", timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def _fresh_database(server: str) -> Iterator[str]:
    name = f"gpuflow_scale_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://{server}/{name}"
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _seconds(value: float, width: int, digits: int) -> str:
    """``--`` where nothing was measured (no waiter checked twice, nothing taken)."""
    return f"{'--':>{width}} " if value != value else f"{value:>{width}.{digits}f}s"


def _print_row(design: str, waiters: int, row: dict[str, Any]) -> None:
    print(
        f"{waiters:>7} {design:>8} "
        f"{1000 * row['pass p50']:>7.1f}/{1000 * row['pass p99']:<7.1f}"
        f"{row['passes/s']:>9.1f} {row['checks/s']:>8.0f} {_seconds(row['check gap p50'], 8, 2)}"
        f" {row['renew age max']:>9.1f}s"
        f" {row['expired']:>8} {row['overtaken']:>9}"
        f" {row['taken']:>5}/{row['freed']:<5}"
        f" {_seconds(row['taken p50'], 6, 3)}/{_seconds(row['taken p99'], 6, 3)}"
        f" {row['stmts/s']:>8.0f} {row['xact/s']:>8.0f} {row['conns']:>6}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--waiters", default="100,500,2000,5000")
    parser.add_argument("--holders", type=int, default=1000)
    parser.add_argument("--window", type=float, default=35.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--release-rate", type=float, default=20.0, help="slots freed per s")
    parser.add_argument("--designs", default="current,old")
    parser.add_argument(
        "--postgres", default="postgres@127.0.0.1:5432", help="user@host:port of PostgreSQL"
    )
    args = parser.parse_args()
    print(
        f"{args.holders} holders, {args.processes} processes, {args.window:g} s windows, "
        f"{args.release_rate:g} slots freed/s, ttl {TTL_S:g} s, poll {POLL_S:g} s"
    )
    print(
        f"{'waiters':>7} {'design':>8} {'pass ms p50/p99':<15}{'passes/s':>9} {'checks/s':>8}"
        f" {'check gap':>9} {'renew age':>10} {'expired':>8} {'overtaken':>9} {'taken/freed':>11}"
        f" {'freed->taken p50/p99':>20} {'stmts/s':>8} {'xact/s':>8} {'conns':>6}"
    )
    for waiters in [int(part) for part in args.waiters.split(",")]:
        for design in args.designs.split(","):
            with _fresh_database(args.postgres) as dsn:
                _print_row(design, waiters, _run_once(design, dsn, waiters, args))


if __name__ == "__main__":
    main()
