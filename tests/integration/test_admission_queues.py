"""The admission queue's storage and waiting: order, expiry, cancellation, other processes,
on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gpuflow.core.request import Priority
from gpuflow.gpu.admission.base import (
    AdmissionConfigError,
    AdmissionError,
    AdmissionQueue,
    HandedLease,
)
from gpuflow.gpu.admission.policy import QueueEntry, Ticket
from gpuflow.gpu.admission.postgres_agent import APPLICATION_NAME, CONNECTIONS_PER_PROCESS
from gpuflow.gpu.admission.queues import admission_queue
from gpuflow.gpu.admission.waiting import admitted
from tests.support.postgres import fresh_database
from tests.support.tcp_proxy import OutageProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'admission.sqlite3'}"
    url: str = request.getfixturevalue("postgresql_url_with_clean_tables")
    return url


@pytest.fixture
def queue(queue_url: str) -> AdmissionQueue:
    return admission_queue(queue_url)


@pytest.fixture
def postgresql_url_with_clean_tables(postgres_url: str) -> str:
    import asyncpg

    async def clean() -> None:
        connection = await asyncpg.connect(postgres_url)
        try:
            for table in ("ticket", "pool", "change", "schema"):
                await connection.execute(f"DROP TABLE IF EXISTS gpuflow_admission_{table}")
        finally:
            await connection.close()

    asyncio.run(clean())
    return postgres_url


def test_concurrent_waiters_are_served_in_order_and_never_over_capacity(
    queue: AdmissionQueue,
) -> None:
    capacity = {"gpu": 2}
    order: list[str] = []
    holding = 0
    peak = 0

    async def request(
        name: str, slots: int, priority: Priority, until: asyncio.Event | None
    ) -> None:
        nonlocal holding, peak
        ticket = Ticket(("gpu",), slots, priority, holder=name)
        async with admitted(queue, ticket, capacity, ttl_s=10, poll_s=0.05):
            order.append(name)
            holding += slots
            peak = max(peak, holding)
            await (until.wait() if until is not None else asyncio.sleep(0.5))
            holding -= slots

    async def arrive(
        name: str, slots: int, priority: Priority, until: asyncio.Event | None = None
    ) -> asyncio.Task[None]:
        """Start a request and return once it is queued, so arrivals have a known order."""
        started = asyncio.create_task(request(name, slots, priority, until))
        await _until_queued(queue, name, started)
        return started

    async def main() -> None:
        # The first holder leaves only once everyone is queued: on a loaded machine the
        # arrivals can take longer than any fixed hold.
        everyone_queued = asyncio.Event()
        requests = [
            await arrive("first", 2, Priority.NORMAL, everyone_queued),  # saturates the pool
            await arrive("batch-1", 2, Priority.BATCH),
            await arrive("batch-2", 1, Priority.BATCH),
            await arrive("big", 2, Priority.NORMAL),
            await arrive("small", 1, Priority.NORMAL),
            await arrive("urgent", 1, Priority.HIGH),
        ]
        everyone_queued.set()
        await asyncio.gather(*requests)

    asyncio.run(main())
    assert peak <= 2
    # High first, then normal by arrival (the 2-GPU request is not overtaken by the 1-GPU
    # one behind it while one slot is free), then batch by arrival (likewise).
    assert order == ["first", "urgent", "big", "small", "batch-1", "batch-2"]
    assert asyncio.run(queue.entries()) == []


async def _until_queued(queue: AdmissionQueue, holder: str, request: asyncio.Future[Any]) -> None:
    """Wait until ``holder`` has an entry in the queue; a request that ended first (it
    failed) or a minute without one fails the test, naming which."""
    deadline = time.monotonic() + 60  # only a stuck test reaches this, never a slow one
    while not [entry for entry in await queue.entries() if entry.holder == holder]:
        if request.done():
            request.result()  # its exception, if it failed
            raise AssertionError(f"{holder} ended without ever being queued")
        assert time.monotonic() < deadline, f"{holder} never reached the admission queue"
        await asyncio.sleep(0.01)


def test_a_waiter_killed_9_stops_blocking_the_queue_after_its_deadline(
    queue_url: str, queue: AdmissionQueue
) -> None:
    """A 2-GPU request whose process is killed (-9) while it waits: nothing of it renews
    its entry any more, so the entry is reaped at its deadline and the request behind it
    gets in (on PostgreSQL through the agent's owed-pass probe: the waiter itself does
    not poll while its process LISTENs)."""
    code = (
        "import asyncio, os, signal\n"
        "from gpuflow.gpu.admission.policy import Ticket\n"
        "from gpuflow.gpu.admission.queues import admission_queue\n"
        "from gpuflow.core.request import Priority\n"
        "async def main():\n"
        f"    q = admission_queue({queue_url!r})\n"
        "    await q.enqueue(Ticket(('gpu',), 2, Priority.HIGH, 'dead'), {'gpu': 2}, 1.0)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )

    async def main() -> float:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        assert await asyncio.wait_for(child.wait(), 60) == -signal.SIGKILL
        assert [entry.holder for entry in await queue.entries()] in (["dead"], [])
        started = time.monotonic()
        alive = Ticket(("gpu",), 1, Priority.BATCH, holder="alive")
        async with admitted(queue, alive, {"gpu": 2}, ttl_s=10, poll_s=0.1):
            return time.monotonic() - started

    # That it gets in at all is the behaviour: a minute is "never" (a stuck queue), not
    # a speed bound.
    asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert asyncio.run(queue.entries()) == []


def test_cancelling_a_waiter_removes_its_entry(queue: AdmissionQueue) -> None:
    async def main() -> list[QueueEntry]:
        holder = Ticket(("gpu",), 1, Priority.NORMAL, holder="holder")
        async with admitted(queue, holder, {"gpu": 1}, ttl_s=10):
            waiter = asyncio.create_task(
                admitted(queue, Ticket(("gpu",), 1, Priority.NORMAL, "w"), {"gpu": 1}).__aenter__()
            )
            await _until_queued(queue, "w", waiter)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            return await queue.entries()

    remaining = asyncio.run(main())
    assert [entry.holder for entry in remaining] == ["holder"]


def test_waiters_in_other_processes_share_the_queue(tmp_path: Path) -> None:
    """Admission state is in the database, not in one process: a waiter in another
    process queues behind a holder here, and gets in once it leaves."""
    url = f"sqlite:///{tmp_path / 'admission.sqlite3'}"
    queue = admission_queue(url)
    stamp = tmp_path / "admitted-at"
    code = (
        "import asyncio, sys, time\n"
        "from gpuflow.gpu.admission.policy import Ticket\n"
        "from gpuflow.gpu.admission.queues import admission_queue\n"
        "from gpuflow.gpu.admission.waiting import admitted\n"
        "from gpuflow.core.request import Priority\n"
        "async def main():\n"
        f"    q = admission_queue({url!r})\n"
        "    async with admitted(q, Ticket(('gpu',), 1, Priority.NORMAL, 'child'), {'gpu': 1},"
        " poll_s=0.1):\n"
        f"        open({str(stamp)!r}, 'w').write(repr(time.time()))\n"
        "asyncio.run(main())\n"
    )

    async def main() -> tuple[float, float]:
        async with admitted(queue, Ticket(("gpu",), 1, Priority.NORMAL, "parent"), {"gpu": 1}):
            child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
            deadline = time.monotonic() + 15
            while not [e for e in await queue.entries() if e.holder == "child"]:
                assert time.monotonic() < deadline, "the child never queued"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            assert not stamp.exists(), "the child got in while the only slot was held"
            released = time.time()
        assert await asyncio.wait_for(child.wait(), 60) == 0  # 60 s: "never", not a bound
        return released, float(stamp.read_text())

    released, child_admitted = asyncio.run(main())
    # The order is the behaviour (in only after the release); how soon depends on load.
    assert released <= child_admitted


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_waiter_in_another_process_is_woken_when_the_slot_frees(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The cross-process wake-up (NOTIFY, or SQLite's data_version): the child's poll
    fallback is a minute, so getting in within seconds of the release is the wake-up."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'admission.sqlite3'}"
    else:
        url = request.getfixturevalue("postgresql_url_with_clean_tables")
    queue = admission_queue(url)
    stamp = tmp_path / "admitted-at"
    code = (
        "import asyncio, time\n"
        "from gpuflow.gpu.admission.policy import Ticket\n"
        "from gpuflow.gpu.admission.queues import admission_queue\n"
        "from gpuflow.gpu.admission.waiting import admitted\n"
        "from gpuflow.core.request import Priority\n"
        "async def main():\n"
        f"    q = admission_queue({url!r})\n"
        "    async with admitted(q, Ticket(('gpu',), 1, Priority.NORMAL, 'child'), {'gpu': 1},"
        " ttl_s=120, poll_s=60):\n"
        f"        open({str(stamp)!r}, 'w').write(repr(time.time()))\n"
        "asyncio.run(main())\n"
    )

    async def main() -> tuple[float, float]:
        parent = Ticket(("gpu",), 1, Priority.NORMAL, "parent")
        async with admitted(queue, parent, {"gpu": 1}, ttl_s=120):
            child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
            deadline = time.monotonic() + 30
            while not [e for e in await queue.entries() if e.holder == "child"]:
                assert time.monotonic() < deadline, "the child never queued"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the child is asleep on its wake-up by now
            assert not stamp.exists(), "the child got in while the only slot was held"
            released = time.time()
        assert await asyncio.wait_for(child.wait(), 55) == 0
        return released, float(stamp.read_text())

    released, child_admitted = asyncio.run(main())
    assert released <= child_admitted < released + 10


def test_an_unknown_queue_url_is_refused_naming_the_scheme() -> None:
    with pytest.raises(AdmissionConfigError, match="'redis'"):
        admission_queue("redis://127.0.0.1:6379/0")


def test_an_unreachable_postgresql_is_a_clear_error() -> None:
    queue = admission_queue("postgresql://gpuflow:secret-pw@127.0.0.1:1/none")
    ticket = Ticket(("gpu",), 1, Priority.NORMAL, "x")
    with pytest.raises(AdmissionError, match=r"postgresql://127\.0\.0\.1:1/none") as failure:
        asyncio.run(queue.enqueue(ticket, {"gpu": 1}, 10))
    assert "secret-pw" not in str(failure.value)


def _proxy_for(url: str) -> OutageProxy:
    parts = urlsplit(url)
    return OutageProxy(parts.hostname or "127.0.0.1", parts.port or 5432)


def _through(proxy: OutageProxy, url: str) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


def test_a_postgresql_outage_while_holding_admission_never_fails_the_job(
    postgresql_url_with_clean_tables: str,
) -> None:
    async def main() -> tuple[str, list[QueueEntry]]:
        proxy = _proxy_for(postgresql_url_with_clean_tables)
        await proxy.start()
        queue = admission_queue(_through(proxy, postgresql_url_with_clean_tables))
        ticket = Ticket(("gpu",), 1, Priority.NORMAL, "job-a")
        try:
            async with admitted(queue, ticket, {"gpu": 1}, ttl_s=1.5):
                await proxy.cut()  # heartbeats every 0.5 s fail for 2 s: the job goes on
                await asyncio.sleep(2.0)
                await proxy.restore()
                await asyncio.sleep(1.0)
                result = "job finished"
            return result, await queue.entries()
        finally:
            await proxy.close()

    result, entries = asyncio.run(main())
    assert result == "job finished" and entries == []


def test_a_postgresql_outage_while_waiting_is_ridden_out_and_the_waiter_admitted(
    postgresql_url_with_clean_tables: str,
) -> None:
    url = postgresql_url_with_clean_tables

    async def main() -> float:
        proxy = _proxy_for(url)
        await proxy.start()
        direct, cut_off = admission_queue(url), admission_queue(_through(proxy, url))
        holder = Ticket(("gpu",), 1, Priority.NORMAL, "holder")
        waiter = Ticket(("gpu",), 1, Priority.NORMAL, "waiter")
        try:
            async with admitted(direct, holder, {"gpu": 1}, ttl_s=30):
                waiting = asyncio.create_task(_admitted_after(cut_off, waiter))
                for _ in range(600):  # the waiter's entry is in: 30 s at most
                    if len(await direct.entries()) == 2:
                        break
                    await asyncio.sleep(0.05)
                await proxy.cut()  # its LISTEN connection and its checks fail from here
                await asyncio.sleep(1.5)
            asyncio.get_running_loop().call_later(
                1.0, lambda: asyncio.ensure_future(proxy.restore())
            )
            return await asyncio.wait_for(waiting, timeout=30)
        finally:
            await proxy.close()

    assert asyncio.run(main()) > 2.5  # admitted once the database answered again


async def _admitted_after(queue: AdmissionQueue, ticket: Ticket) -> float:
    async with admitted(queue, ticket, {"gpu": 1}, ttl_s=30) as waited:
        return waited


def test_a_process_starting_beside_running_queue_transactions_takes_no_table_lock(
    postgresql_url_with_clean_tables: str,
) -> None:
    # A transaction of a running process holds a lock on the ticket table (as each check
    # does); a new process's first statement must not wait for it, as DDL would (ALTER
    # TABLE takes ACCESS EXCLUSIVE even where the column exists) and deadlock.
    import asyncpg

    url = postgresql_url_with_clean_tables

    async def main() -> None:
        await admission_queue(url).entries()  # the schema, made by the first process
        running = await asyncpg.connect(url)
        try:
            async with running.transaction():
                await running.fetch("SELECT * FROM gpuflow_admission_ticket FOR UPDATE")
                ticket = Ticket(("gpu",), 1, Priority.NORMAL, "new-process")
                await asyncio.wait_for(
                    asyncio.to_thread(asyncio.run, _enqueue_and_leave(url, ticket)), timeout=10
                )
        finally:
            await running.close()

    asyncio.run(main())


async def _enqueue_and_leave(url: str, ticket: Ticket) -> None:
    queue = admission_queue(url)  # in its own event loop: its own agent and connections
    await queue.enqueue(ticket, {"gpu": 1}, ttl_s=30)
    await queue.leave(ticket.ticket_id)


def test_a_database_of_an_earlier_release_is_brought_to_the_current_schema(
    postgresql_url_with_clean_tables: str,
) -> None:
    import asyncpg

    url = postgresql_url_with_clean_tables

    async def main() -> tuple[set[str], int]:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(_POSTGRES_SCHEMA_BEFORE_VERSIONS)
            queue = admission_queue(url)
            holder, waiter = (Ticket(("gpu",), 1, Priority.NORMAL, holder=h) for h in "hw")
            for ticket in (holder, waiter):
                await queue.enqueue(ticket, {"gpu": 1}, ttl_s=30)
            assert await queue.try_admit(holder.ticket_id, 30) is True
            assert await queue.hand_over(holder.ticket_id, HandedLease("lease", 1.0e10))
            assert await queue.handed_lease(waiter.ticket_id) == HandedLease("lease", 1.0e10)
            columns = {
                row["column_name"]
                for row in await connection.fetch(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'gpuflow_admission_ticket'"
                )
            }
            version = await connection.fetchval("SELECT version FROM gpuflow_admission_schema")
            return columns, version
        finally:
            await connection.close()

    columns, version = asyncio.run(main())
    assert {"handed_lease", "handed_lease_valid_until"} <= columns
    assert version >= 2


# The queue's tables as releases before hand-overs and the schema version made them.
_POSTGRES_SCHEMA_BEFORE_VERSIONS = """
CREATE TABLE gpuflow_admission_ticket (
    seq BIGSERIAL PRIMARY KEY, ticket_id TEXT NOT NULL UNIQUE, pools TEXT NOT NULL,
    slots INTEGER NOT NULL, rank INTEGER NOT NULL, holder TEXT NOT NULL,
    admitted BOOLEAN NOT NULL DEFAULT FALSE, expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE gpuflow_admission_pool (pool TEXT PRIMARY KEY, slots INTEGER NOT NULL);
"""


def test_leaving_rides_out_an_outage_at_the_end_of_the_job(
    postgresql_url_with_clean_tables: str,
) -> None:
    async def main() -> list[QueueEntry]:
        proxy = _proxy_for(postgresql_url_with_clean_tables)
        await proxy.start()
        queue = admission_queue(_through(proxy, postgresql_url_with_clean_tables))
        ticket = Ticket(("gpu",), 1, Priority.NORMAL, "job-b")
        try:
            # A long ttl: an entry gone afterwards has left, it did not expire.
            async with admitted(queue, ticket, {"gpu": 1}, ttl_s=60):
                await proxy.cut()
                asyncio.get_running_loop().call_later(
                    1.0, lambda: asyncio.ensure_future(proxy.restore())
                )
            return await queue.entries()
        finally:
            await proxy.close()

    assert asyncio.run(main()) == []


def test_many_waiters_take_each_freed_slot_on_wake_up_in_priority_then_arrival_order(
    queue: AdmissionQueue,
) -> None:
    """150 waiters whose poll fallback is a minute: a freed slot can only be taken within
    seconds through the queue's wake-up (LISTEN/NOTIFY, or the SQLite change signal)."""
    capacity = {"gpu": 3}
    priorities = [Priority.BATCH, Priority.NORMAL, Priority.HIGH]
    tickets = [
        Ticket(("gpu",), 1, priorities[number % 3], holder=f"w{number:03d}")
        for number in range(150)
    ]
    admitted_at: dict[str, float] = {}
    released_at: list[float] = []
    overtaken: list[str] = []

    async def wait_as(ticket: Ticket) -> None:
        """Wait for an already queued ticket, as ``admitted`` does after its enqueue."""
        async with queue.wakeup(ticket.ticket_id) as wakeup:
            while True:
                wakeup.clear()
                if await queue.try_admit(ticket.ticket_id, 120):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), 60)
        admitted_at[ticket.holder] = time.monotonic()
        # Order: nothing ahead of us still waits (entries ahead only ever get admitted or
        # leave, so one admitted out of turn is seen unless the skipped one catches up).
        entries = await queue.entries()
        mine = next(entry for entry in entries if entry.ticket_id == ticket.ticket_id)
        overtaken.extend(
            entry.holder
            for entry in entries
            if not entry.admitted and (entry.rank, entry.seq) < (mine.rank, mine.seq)
        )
        await asyncio.sleep(0.02)
        released_at.append(time.monotonic())
        await queue.leave(ticket.ticket_id)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as holding:
            for number in range(3):
                holder = Ticket(("gpu",), 1, Priority.HIGH, holder=f"holder-{number}")
                await holding.enter_async_context(admitted(queue, holder, capacity, ttl_s=120))
            for ticket in tickets:  # one by one: the arrival order is known
                await queue.enqueue(ticket, capacity, ttl_s=120)
            waiters = [asyncio.create_task(wait_as(ticket)) for ticket in tickets]
            await asyncio.sleep(0.5)
            assert not admitted_at, "a waiter got in while every slot was held"
            released_at.append(time.monotonic())
        # Each waiter's own poll comes only after a minute: this is "never".
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=55)

    asyncio.run(main())
    assert sorted(admitted_at) == sorted(ticket.holder for ticket in tickets)
    assert overtaken == []
    # Every admission follows a release by seconds at most, never by a poll interval.
    for name in admitted_at:
        before = max(release for release in released_at if release <= admitted_at[name])
        assert admitted_at[name] - before < 10, (name, admitted_at[name] - before)
    assert asyncio.run(queue.entries()) == []


def test_waiters_of_a_live_process_never_expire_with_polling_off(
    postgresql_url_with_clean_tables: str, caplog: pytest.LogCaptureFixture
) -> None:
    """200 waiters with a 1.5 s ttl and a poll interval of a minute wait four ttls behind
    a holder: they do not poll (their process LISTENs), and the agent renews every entry
    of the process in time, so each keeps its place (its arrival number) throughout."""
    queue = admission_queue(postgresql_url_with_clean_tables)
    capacity = {"gpu": 1}
    tickets = [Ticket(("gpu",), 1, Priority.NORMAL, holder=f"w{n:03d}") for n in range(200)]

    async def wait(ticket: Ticket) -> None:
        async with admitted(queue, ticket, capacity, ttl_s=1.5, poll_s=60):
            pass

    async def main() -> tuple[list[dict[str, int]], float | None]:
        holder = Ticket(("gpu",), 1, Priority.HIGH, holder="holder")
        async with admitted(queue, holder, capacity, ttl_s=1.5):
            waiters = [asyncio.create_task(wait(ticket)) for ticket in tickets]
            await _until_queued(queue, tickets[-1].holder, waiters[-1])
            samples: list[dict[str, int]] = []
            ends = time.monotonic() + 6.0
            while time.monotonic() < ends:
                samples.append({entry.holder: entry.seq for entry in await queue.entries()})
                await asyncio.sleep(0.2)
            fallback = queue.fallback_poll_s(60)
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return samples, fallback

    with caplog.at_level("WARNING", logger="gpuflow.gpu.admission"):
        samples, fallback = asyncio.run(main())
    assert fallback is None, "waiters polled although their process LISTENs"
    first = samples[0]
    assert sorted(first) == sorted(["holder", *(ticket.holder for ticket in tickets)])
    assert all(sample == first for sample in samples), "an entry expired and queued again"
    assert "expired" not in caplog.text
    assert asyncio.run(queue.entries()) == []


def _listener_pids(observer: Any) -> Any:
    return observer.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1 AND query ILIKE 'LISTEN%'",
        APPLICATION_NAME,
    )


def test_a_lost_listen_connection_is_set_up_again_and_wakes_its_waiters(
    postgresql_url_with_clean_tables: str,
) -> None:
    """The LISTEN backend is terminated while a waiter sleeps (its poll interval a
    minute): the agent listens again, and the waiter is woken at the next release."""
    import asyncpg

    url = postgresql_url_with_clean_tables
    queue = admission_queue(url)
    capacity = {"gpu": 1}

    async def wait(ticket: Ticket) -> float:
        async with admitted(queue, ticket, capacity, poll_s=60):
            return time.monotonic()

    async def main() -> tuple[set[int], set[int], float]:
        observer = await asyncpg.connect(url)
        try:
            holder = Ticket(("gpu",), 1, Priority.HIGH, holder="holder")
            async with admitted(queue, holder, capacity):
                waiter = asyncio.create_task(wait(Ticket(("gpu",), 1, Priority.NORMAL, "waiter")))
                await _until_queued(queue, "waiter", waiter)
                lost = {row["pid"] for row in await _listener_pids(observer)}
                for pid in lost:
                    await observer.execute("SELECT pg_terminate_backend($1)", pid)
                deadline = time.monotonic() + 30
                while not (again := {row["pid"] for row in await _listener_pids(observer)} - lost):
                    assert time.monotonic() < deadline, "the agent never listened again"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                assert not waiter.done(), "the waiter got in while the slot was held"
                released = time.monotonic()
            # 30 s: "never"; the waiter's own poll would come after a minute.
            admitted_at = await asyncio.wait_for(waiter, 30)
            return lost, again, admitted_at - released
        finally:
            await observer.close()

    lost, again, took = asyncio.run(main())
    assert len(lost) == 1 and len(again) == 1
    assert took < 10, took


def test_without_a_listen_connection_waiters_poll(
    postgresql_url_with_clean_tables: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that cannot LISTEN (here: its listen alias names no database) falls
    back to each waiter's poll interval, and is still served."""
    url = postgresql_url_with_clean_tables
    separator = "&" if "?" in url else "?"
    queue = admission_queue(f"{url}{separator}pgbouncer_listen_database=gpuflow_no_such_db")
    capacity = {"gpu": 1}
    order: list[str] = []

    async def wait(name: str) -> None:
        ticket = Ticket(("gpu",), 1, Priority.NORMAL, holder=name)
        async with admitted(queue, ticket, capacity, poll_s=0.2):
            order.append(name)

    async def main() -> float | None:
        holder = Ticket(("gpu",), 1, Priority.HIGH, holder="holder")
        async with admitted(queue, holder, capacity):
            waiters = [asyncio.create_task(wait(f"w{number}")) for number in range(3)]
            for number, waiter in enumerate(waiters):
                await _until_queued(queue, f"w{number}", waiter)
            fallback = queue.fallback_poll_s(0.2)
            await asyncio.sleep(0.5)
            assert not order, "a waiter got in while the slot was held"
        await asyncio.wait_for(asyncio.gather(*waiters), 30)
        return fallback

    with caplog.at_level("WARNING", logger="gpuflow.gpu.admission"):
        fallback = asyncio.run(main())
    assert fallback == 0.2
    assert order == ["w0", "w1", "w2"]
    assert caplog.text.count("Cannot LISTEN") == 1, caplog.text


def test_200_concurrent_runs_in_a_process_stay_within_its_connection_budget(
    postgresql_url_with_clean_tables: str,
) -> None:
    """Runs share their process's agent: its pool and its one LISTEN connection, counted
    by PostgreSQL itself (pg_stat_activity) while 200 runs wait, hold and leave."""
    import asyncpg

    url = postgresql_url_with_clean_tables
    queue = admission_queue(url)
    capacity = {"gpu": 8}
    served: list[str] = []

    async def run(number: int) -> None:
        ticket = Ticket(("gpu",), 1, Priority.NORMAL, holder=f"run-{number}")
        async with admitted(queue, ticket, capacity, ttl_s=60, poll_s=0.2):
            await asyncio.sleep(0.05)
            served.append(ticket.holder)

    async def connections(observer: asyncpg.Connection, since: Any) -> int:
        # Only this test's connections, should another test's still be closing.
        return int(
            await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = $1 AND backend_start >= $2",
                APPLICATION_NAME,
                since,
            )
        )

    async def main() -> list[int]:
        observer = await asyncpg.connect(url)
        since = await observer.fetchval("SELECT clock_timestamp()")
        counts: list[int] = []
        try:
            runs = asyncio.gather(*(run(number) for number in range(200)))
            while not runs.done():
                counts.append(await connections(observer, since))
                await asyncio.sleep(0.02)
            await runs
        finally:
            await observer.close()
        return counts

    counts = asyncio.run(main())
    assert len(served) == 200
    assert max(counts) <= CONNECTIONS_PER_PROCESS, counts
    assert max(counts) >= 2, "the count saw none of the queue's connections"


def _queue_connections(url: str) -> int:
    """The queue's connections to the test database, as PostgreSQL counts them."""
    import asyncpg

    async def count() -> int:
        observer = await asyncpg.connect(url)
        try:
            return int(
                await observer.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = $1",
                    APPLICATION_NAME,
                )
            )
        finally:
            await observer.close()

    return asyncio.run(count())


def _wait_for_queue_connections(url: str, expected: int, within_s: float = 5.0) -> int:
    """PostgreSQL ends a backend shortly after its client hung up: wait for the count."""
    deadline = time.monotonic() + within_s
    while (found := _queue_connections(url)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_loops_connections_are_closed_when_it_shuts_down(
    postgresql_url_with_clean_tables: str,
) -> None:
    """Each asyncio.run opens the queue's pool and LISTEN connection for its runs; when it
    returns they are closed, so a process that runs many loops holds none of the old ones."""
    url = postgresql_url_with_clean_tables
    queue = admission_queue(url)
    assert _wait_for_queue_connections(url, 0) == 0

    async def one_run(number: int) -> int:
        ticket = Ticket(("gpu",), 1, Priority.NORMAL, holder=f"loop-{number}")
        async with admitted(queue, ticket, {"gpu": 1}, ttl_s=30, poll_s=0.2):
            pass
        return await asyncio.to_thread(_queue_connections, url)

    while_running = [asyncio.run(one_run(number)) for number in range(3)]
    assert all(count >= 2 for count in while_running), while_running  # pool + LISTEN
    assert _wait_for_queue_connections(url, 0) == 0


def test_connections_of_a_loop_closed_without_shutdown_are_dropped(
    postgresql_url_with_clean_tables: str,
) -> None:
    """A loop closed without shutting down its async generators: its connections are cut
    when the next agent is made, in whatever loop (and at process exit, which the next
    test checks in a child process)."""
    url = postgresql_url_with_clean_tables
    queue = admission_queue(url)

    async def one_run() -> None:
        ticket = Ticket(("gpu",), 1, Priority.NORMAL, holder="abandoned-loop")
        async with admitted(queue, ticket, {"gpu": 1}, ttl_s=30, poll_s=0.2):
            pass

    loop = asyncio.new_event_loop()
    loop.run_until_complete(one_run())
    # Its tasks finish (the pass that the leave asked for), its generators stay open.
    loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop)))
    loop.close()
    assert _queue_connections(url) >= 2

    async def entries() -> list[QueueEntry]:
        return await admission_queue(url).entries()

    asyncio.run(entries())
    assert _wait_for_queue_connections(url, 0) == 0


_HOLD_IN_A_THREAD_LOOP = """
import asyncio, sys, threading
from gpuflow.gpu.admission.queues import admission_queue

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
queue = admission_queue(sys.argv[1])
asyncio.run_coroutine_threadsafe(queue.entries(), loop).result(30)
print("connected", flush=True)
sys.stdin.readline()
"""


def test_connections_of_a_loop_still_running_at_exit_are_closed(
    postgresql_url_with_clean_tables: str,
) -> None:
    """A process whose loop runs in a daemon thread (never shut down): at exit the agent
    closes its connections on that loop, so PostgreSQL sees a clean goodbye."""
    import subprocess

    url = postgresql_url_with_clean_tables
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_IN_A_THREAD_LOOP, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "connected"
        assert _queue_connections(url) >= 1
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(30) == 0
    finally:
        child.kill()
    assert _wait_for_queue_connections(url, 0) == 0
