"""A finished holder's Prefect lease handed to the next admitted job through the admission
queue, against the session's real Prefect server, on the SQLite and the PostgreSQL queue:
requests counted on the wire, active slots read from the server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from gpuflow.core.request import Priority
from gpuflow.gpu.admission.base import AdmissionQueue, HandedLease
from gpuflow.gpu.admission.policy import Ticket
from gpuflow.gpu.admission.queues import admission_queue
from gpuflow.gpu.capacity import ensure_gpu_limits
from gpuflow.gpu.hold import Admission, gpu_hold
from gpuflow.gpu.registry import JobRegistry
from gpuflow.ops.local_server import LocalServer
from tests.support.http_recorder import RecordingProxy
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.integration

_TAKE = "/concurrency_limits/increment-with-lease"
_RELEASE = "/concurrency_limits/decrement-with-lease"


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AdmissionQueue:
    if request.param == "sqlite":
        return admission_queue(f"sqlite:///{tmp_path / 'admission.sqlite3'}")
    url: str = request.getfixturevalue("postgres_url")
    return admission_queue(url)


async def _active_slots(name: str) -> int:
    async with get_client() as client:
        return int((await client.read_global_concurrency_limit_by_name(name)).active_slots)


@contextlib.asynccontextmanager
async def _watched_limit(name: str, size: int) -> AsyncIterator[list[int]]:
    """Reads the limit's active slots on the server every 20 ms while the body runs."""
    await ensure_gpu_limits({name: size})
    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.append(await _active_slots(name))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        yield seen
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


@contextlib.asynccontextmanager
async def _recorded(server: LocalServer) -> AsyncIterator[RecordingProxy]:
    proxy = RecordingProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        with temporary_settings({PREFECT_API_URL: f"{proxy.url}/api"}):
            yield proxy
    finally:
        await proxy.close()


async def _queued(queue: AdmissionQueue, holder: str) -> None:
    deadline = time.monotonic() + 30
    while holder not in {entry.holder for entry in await queue.entries()}:
        assert time.monotonic() < deadline, f"{holder} never queued"
        await asyncio.sleep(0.02)


def test_jobs_on_one_slot_hand_one_lease_on_without_a_slot_request_between_them(
    prefect_server: LocalServer, queue: AdmissionQueue, tmp_path: Path
) -> None:
    """Four jobs queue for one slot: the first takes it, each hands it to the next as its
    job ends, the last gives it back. The registry's record moves with the lease."""
    limit = f"gpu-hand-{uuid.uuid4().hex[:6]}"
    registry = JobRegistry(tmp_path / "running")
    admission = Admission(queue, Priority.NORMAL, ttl_s=30)
    spans: dict[str, tuple[float, float]] = {}
    leases: dict[str, str] = {}
    records: dict[str, list[tuple[str, str]]] = {}

    async def job(name: str) -> None:
        async with gpu_hold(
            [limit], 1, job_name=name, run_id=None, lease_s=60, registry=registry,
            admission=admission,
        ) as hold:  # fmt: skip
            started = time.monotonic()
            leases[name] = str(hold.lease.lease_id)
            records[name] = [(job.job_name, job.lease_id) for job in registry.jobs()[0]]
            await asyncio.sleep(0.3)
            spans[name] = (started, time.monotonic())

    async def main() -> tuple[list[Any], list[Any], list[int]]:
        async with _watched_limit(limit, 1) as seen, _recorded(prefect_server) as proxy:
            tasks = []
            for number in range(4):
                name = f"job-{number}"
                tasks.append(asyncio.create_task(job(name)))
                await _queued(queue, name)
            await asyncio.gather(*tasks)
        return proxy.received(_TAKE), proxy.received(_RELEASE), seen

    takes, releases, seen = asyncio.run(main())
    assert [exchange.status for exchange in takes] == [200], takes
    assert len(releases) == 1, releases
    assert len(set(leases.values())) == 1, leases
    order = sorted(spans, key=lambda name: spans[name][0])
    assert order == ["job-0", "job-1", "job-2", "job-3"]
    for earlier, later in itertools.pairwise(order):
        assert spans[earlier][1] <= spans[later][0], (earlier, later, spans)
    for name, lease_id in leases.items():
        assert records[name] == [(name, lease_id)], records
    assert max(seen) == 1, seen
    assert asyncio.run(_active_slots(limit)) == 0
    assert registry.jobs() == ([], [])
    assert asyncio.run(queue.entries()) == []


def test_handed_leases_never_put_more_slots_on_the_limit_than_it_holds(
    prefect_server: LocalServer, queue: AdmissionQueue, tmp_path: Path
) -> None:
    """Jobs of 1 and 2 GPUs on a limit of 2: a lease goes only to a request that wants the
    same slots; the others take theirs. The server never counts more than 2."""
    limit = f"gpu-mixed-{uuid.uuid4().hex[:6]}"
    registry = JobRegistry(tmp_path / "running")
    admission = Admission(queue, Priority.NORMAL, ttl_s=30)
    sizes = [1, 1, 2, 1, 1, 2, 2, 1, 1, 1]
    spans: list[tuple[float, float, int]] = []

    async def job(number: int, slots: int) -> None:
        async with gpu_hold(
            [limit], slots, job_name=f"job-{number}", run_id=None, lease_s=60,
            registry=registry, admission=admission,
        ):  # fmt: skip
            started = time.monotonic()
            await asyncio.sleep(0.2)
            spans.append((started, time.monotonic(), slots))

    async def main() -> tuple[list[int], list[int], int]:
        async with _watched_limit(limit, 2) as seen, _recorded(prefect_server) as proxy:
            tasks = []
            for number, slots in enumerate(sizes):
                tasks.append(asyncio.create_task(job(number, slots)))
                await _queued(queue, f"job-{number}")
            await asyncio.gather(*tasks)
        takes = [exchange.status for exchange in proxy.received(_TAKE)]
        return seen, takes, len(proxy.received(_RELEASE))

    seen, takes, releases = asyncio.run(main())
    events = sorted(
        [(start, slots) for start, _, slots in spans] + [(end, -slots) for _, end, slots in spans]
    )
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    assert peak <= 2 and max(seen) <= 2, (peak, max(seen))
    assert len(spans) == len(sizes)
    # Some leases were handed on (fewer granted than jobs), and every one granted was given
    # back; an admitted request never met a full limit.
    assert takes.count(200) < len(sizes) and takes.count(200) == releases, (takes, releases)
    assert 423 not in takes, takes
    assert asyncio.run(_active_slots(limit)) == 0
    assert asyncio.run(queue.entries()) == []


def test_a_lease_handed_to_a_receiver_that_died_comes_back_when_it_expires(
    prefect_server: LocalServer, tmp_path: Path
) -> None:
    """The receiver's process is gone before it claims the lease (its ticket is queued,
    nobody renews it). Its entry expires, the next request is admitted, and the limit still
    counts the handed lease until the server lets it expire: the next job starts only then."""
    limit = f"gpu-dead-{uuid.uuid4().hex[:6]}"
    queue = admission_queue(f"sqlite:///{tmp_path / 'admission.sqlite3'}")
    registry = JobRegistry(tmp_path / "running")
    admission = Admission(queue, Priority.NORMAL, ttl_s=30)
    dead = Ticket((limit,), 1, Priority.NORMAL, holder="dead-receiver")
    times: dict[str, float] = {}

    async def job(name: str) -> None:
        async with gpu_hold(
            [limit], 1, job_name=name, run_id=None, lease_s=60, registry=registry,
            admission=admission,
        ):  # fmt: skip
            times[f"{name} started"] = time.monotonic()
            await asyncio.sleep(0.2)
        times[f"{name} ended"] = time.monotonic()

    async def main() -> tuple[list[int], Any, list[Any]]:
        async with _watched_limit(limit, 1) as seen, _recorded(prefect_server) as proxy:
            first = asyncio.create_task(job("first"))
            await _queued(queue, "first")
            await queue.enqueue(dead, {limit: 1}, ttl_s=5)
            await first
            handed = await queue.handed_lease(dead.ticket_id)
            await job("next")
        return seen, handed, proxy.received(_TAKE)

    seen, handed, takes = asyncio.run(main())
    assert handed is not None, "the lease was not handed to the waiting receiver"
    assert max(seen) == 1, seen
    # The handed lease held the slot until it expired (60 s lease; the server's repossessor
    # looks every 15 s): the next job met a full limit and started only after that.
    assert times["next started"] - times["first ended"] >= 45, times
    assert 423 in [exchange.status for exchange in takes] and takes[-1].status == 200, takes
    assert asyncio.run(_active_slots(limit)) == 0


def test_a_hand_over_keeps_the_queue_order_and_changes_nothing_without_a_receiver(
    queue: AdmissionQueue,
) -> None:
    """A 2-GPU request at the head reserves what frees up: the 1-GPU request behind it gets
    no lease, and the holder stays queued until it gives its slots back; once the head
    fits, it is admitted, and a lease goes only to a request of the same shape."""
    capacity = {"gpu": 2}

    async def main() -> None:
        holder, other = (Ticket(("gpu",), 1, Priority.NORMAL, holder=h) for h in "ho")
        for ticket in (holder, other):
            await queue.enqueue(ticket, capacity, ttl_s=30)
            assert await queue.try_admit(ticket.ticket_id, 30) is True
        big = Ticket(("gpu",), 2, Priority.NORMAL, holder="big")
        small = Ticket(("gpu",), 1, Priority.NORMAL, holder="small")
        for ticket in (big, small):
            await queue.enqueue(ticket, capacity, ttl_s=30)
        lease = HandedLease("lease-of-holder", time.time() + 60)
        assert await queue.hand_over(holder.ticket_id, lease) is None
        entries = {entry.holder: entry.admitted for entry in await queue.entries()}
        assert entries == {"h": True, "o": True, "big": False, "small": False}
        assert await queue.handed_lease(small.ticket_id) is None
        await queue.leave(holder.ticket_id)
        # The head still waits for the other slot; when that holder leaves, the 2-GPU
        # request fits, but a 1-slot lease is no use to it.
        assert await queue.hand_over(other.ticket_id, lease) is None
        await queue.leave(other.ticket_id)
        assert await queue.try_admit(big.ticket_id, 30) is True
        assert await queue.handed_lease(big.ticket_id) is None
        # Now the 1-GPU request is next and wants what the 2-GPU lease holds: no match.
        assert await queue.hand_over(big.ticket_id, lease) is None
        await queue.leave(big.ticket_id)
        assert await queue.try_admit(small.ticket_id, 30) is True
        first, second = (Ticket(("gpu",), 1, Priority.NORMAL, holder=h) for h in ("f1", "f2"))
        for ticket in (first, second):
            await queue.enqueue(ticket, capacity, ttl_s=30)
        assert await queue.try_admit(first.ticket_id, 30) is True  # the free slot
        assert await queue.hand_over(small.ticket_id, lease) == second.ticket_id
        assert await queue.try_admit(second.ticket_id, 30) is True
        assert await queue.handed_lease(second.ticket_id) == lease
        assert await queue.handed_lease(first.ticket_id) is None
        assert [entry.holder for entry in await queue.entries()] == ["f1", "f2"]
        for ticket in (first, second):
            await queue.leave(ticket.ticket_id)

    asyncio.run(main())


_SCHEMA_BEFORE_HAND_OVERS = """
CREATE TABLE gpuflow_admission_ticket (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ticket_id TEXT NOT NULL UNIQUE,
    pools TEXT NOT NULL, slots INTEGER NOT NULL, rank INTEGER NOT NULL,
    holder TEXT NOT NULL, admitted INTEGER NOT NULL DEFAULT 0, expires_at REAL NOT NULL
);
"""


def test_a_sqlite_queue_file_from_before_hand_overs_gets_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "admission.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(_SCHEMA_BEFORE_HAND_OVERS)
    queue = admission_queue(f"sqlite:///{path}")

    async def main() -> HandedLease | None:
        holder, waiter = (Ticket(("gpu",), 1, Priority.NORMAL, holder=h) for h in "hw")
        for ticket in (holder, waiter):
            await queue.enqueue(ticket, {"gpu": 1}, ttl_s=30)
        assert await queue.hand_over(holder.ticket_id, HandedLease("a-lease", 1.0e10))
        return await queue.handed_lease(waiter.ticket_id)

    assert asyncio.run(main()) == HandedLease("a-lease", 1.0e10)
