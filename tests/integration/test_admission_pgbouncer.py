"""The PostgreSQL queue through a real PgBouncer in transaction mode: the connections of a
host to PostgreSQL stay within PgBouncer's pool sizes, whatever the number of runs and
flow processes, and admission still works (order, capacity, wake-ups)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gpuflow.gpu.admission.base import AdmissionConfigError
from gpuflow.gpu.admission.postgres_agent import QueueConnections
from tests.support.pgbouncer import PgBouncer, pgbouncer
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.integration

POOL_SIZE = 3
LISTEN_POOL_SIZE = 2

# One flow process: 50 runs through the real queue, each holds a GPU for 50 ms.
_RUNS_IN_A_PROCESS = """
import asyncio, sys
from gpuflow.core.request import Priority
from gpuflow.gpu.admission.policy import Ticket
from gpuflow.gpu.admission.queues import admission_queue
from gpuflow.gpu.admission.waiting import admitted

url, process, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
queue = admission_queue(url)
held = 0
peak = 0

async def run(number):
    global held, peak
    ticket = Ticket(("gpu",), 1, Priority.NORMAL, holder=f"{process}-{number}")
    async with admitted(queue, ticket, {"gpu": 8}, ttl_s=60, poll_s=0.3):
        await asyncio.sleep(0.05)

async def main():
    await asyncio.gather(*(run(number) for number in range(runs)))

asyncio.run(main())
print("served", runs, flush=True)
"""


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def bouncer(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    with pgbouncer(
        database, tmp_path_factory.mktemp("pgbouncer"), POOL_SIZE, LISTEN_POOL_SIZE
    ) as running:
        yield running


def test_200_runs_in_4_processes_hold_no_more_than_the_pool_sizes(
    database: str, bouncer: PgBouncer, tmp_path: Path
) -> None:
    """Four flow processes (one host behind one PgBouncer), 50 runs each: PostgreSQL never
    sees more than the transaction pool plus the session pool of LISTEN connections, and
    every run is served (the processes without a LISTEN session poll)."""
    url = bouncer.admission_url()

    async def watch(processes: list[subprocess.Popen[str]]) -> list[int]:
        observer = await asyncpg.connect(database)
        counts: list[int] = []
        try:
            while any(process.poll() is None for process in processes):
                counts.append(
                    int(
                        await observer.fetchval(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                )
                await asyncio.sleep(0.02)
        finally:
            await observer.close()
        return counts

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _RUNS_IN_A_PROCESS, url, f"p{number}", "50"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for number in range(4)
    ]
    try:
        counts = asyncio.run(watch(processes))
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0] * 4, outputs
    assert all("served 50" in output for output in outputs), outputs
    assert max(counts) <= POOL_SIZE + LISTEN_POOL_SIZE, max(counts)
    assert max(counts) >= 2, "the count saw none of the queue's connections"


def test_the_pgbouncer_url_splits_into_the_pooled_and_the_listen_database() -> None:
    connections = QueueConnections.from_url(
        "postgresql://gpuflow:s3cret@bouncer:6432/queue?sslmode=disable"
        "&pgbouncer_listen_database=queue_listen"
    )
    assert (
        connections.pooled_dsn == "postgresql://gpuflow:s3cret@bouncer:6432/queue?sslmode=disable"
    )
    assert connections.listen_dsn == (
        "postgresql://gpuflow:s3cret@bouncer:6432/queue_listen?sslmode=disable"
    )
    assert connections.statement_cache_size == 0
    direct = QueueConnections.from_url("postgresql://gpuflow@db/queue")
    assert direct.listen_dsn == direct.pooled_dsn and direct.statement_cache_size is None


@pytest.mark.parametrize("value", ["", "a/b"])
def test_a_bad_listen_database_is_refused_naming_it_without_the_password(value: str) -> None:
    with pytest.raises(AdmissionConfigError) as refused:
        QueueConnections.from_url(
            f"postgresql://gpuflow:s3cret@bouncer:6432/queue?pgbouncer_listen_database={value}"
        )
    assert "pgbouncer_listen_database" in str(refused.value)
    assert repr(value) in str(refused.value)
    assert "s3cret" not in str(refused.value)
