"""The admission queue's storage and waiting: order, expiry, cancellation, other processes,
on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gpuflow.core.request import Priority
from gpuflow.gpu.admission.base import AdmissionConfigError, AdmissionError, AdmissionQueue
from gpuflow.gpu.admission.policy import QueueEntry, Ticket
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
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AdmissionQueue:
    if request.param == "sqlite":
        return admission_queue(f"sqlite:///{tmp_path / 'admission.sqlite3'}")
    url: str = request.getfixturevalue("postgresql_url_with_clean_tables")
    return admission_queue(url)


@pytest.fixture
def postgresql_url_with_clean_tables(postgres_url: str) -> str:
    import asyncpg

    async def clean() -> None:
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute("DROP TABLE IF EXISTS gpuflow_admission_ticket")
            await connection.execute("DROP TABLE IF EXISTS gpuflow_admission_pool")
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

    async def request(name: str, slots: int, priority: Priority) -> None:
        nonlocal holding, peak
        ticket = Ticket(("gpu",), slots, priority, holder=name)
        async with admitted(queue, ticket, capacity, ttl_s=10, poll_s=0.05):
            order.append(name)
            holding += slots
            peak = max(peak, holding)
            await asyncio.sleep(0.5)
            holding -= slots

    async def arrive(name: str, slots: int, priority: Priority) -> asyncio.Task[None]:
        """Start a request and return once it is queued, so arrivals have a known order."""
        started = asyncio.create_task(request(name, slots, priority))
        await _until_queued(queue, name, started)
        return started

    async def main() -> None:
        requests = [
            await arrive("first", 2, Priority.NORMAL),  # saturates the pool
            await arrive("batch-1", 2, Priority.BATCH),
            await arrive("batch-2", 1, Priority.BATCH),
            await arrive("big", 2, Priority.NORMAL),
            await arrive("small", 1, Priority.NORMAL),
            await arrive("urgent", 1, Priority.HIGH),
        ]
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


def test_a_dead_waiter_stops_blocking_the_queue_after_its_deadline(queue: AdmissionQueue) -> None:
    async def main() -> float:
        # A 2-GPU request whose process died while waiting: it never polls again.
        dead = Ticket(("gpu",), 2, Priority.HIGH, holder="dead")
        await queue.enqueue(dead, {"gpu": 2}, ttl_s=1.0)
        started = time.monotonic()
        alive = Ticket(("gpu",), 1, Priority.BATCH, holder="alive")
        async with admitted(queue, alive, {"gpu": 2}, ttl_s=10, poll_s=0.1):
            return time.monotonic() - started

    # That it gets in at all is the behaviour: a minute is "never" (a stuck queue), not
    # a speed bound. That it waited for the dead entry's 1 s deadline is the other half,
    # a lower bound, which load can only make longer.
    waited = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert waited > 0.5


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
