"""Several Prefect servers on one PostgreSQL database share GPU-slot leases through Redis
(prefect-redis): the README's production setting for more than one server.

With leases kept by each server on its own (in memory or under its PREFECT_HOME), a
renewal that the load balancer sends to another server is refused (410) and the job
loses its slots; with Redis any server can renew or release any lease, even after the
server that granted it was killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
import redis
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import PrefectHTTPStatusError

from gpuflow.ops.local_server import LocalServer, ensure_server, stop_server
from tests.support.postgres import fresh_database
from tests.support.services import service_missing

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(209)]

# Database 15 of the local Redis: out of the way of anything using the default database 0.
REDIS_URL = os.environ.get("GPUFLOW_TEST_REDIS", "redis://127.0.0.1:6379/15")
LEASE_KEY_PREFIX = "prefect:concurrency:lease:"


def _lease_stored_in_redis(lease_id: UUID) -> bool:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return bool(client.exists(f"{LEASE_KEY_PREFIX}{lease_id}"))
    finally:
        client.close()


@pytest.fixture(scope="module")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Only a Redis that is not there skips; one that answers with an error (a
        # password it wants, a database it lacks) fails the test with that error.
        service_missing(f"no Redis at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@dataclass(frozen=True)
class SharedLeaseCluster:
    """Servers on one database, each with its own PREFECT_HOME, leases in one Redis."""

    states: list[Path]
    database_url: str
    redis_url: str

    def server(self, index: int) -> LocalServer:
        """The index-th server, started (again) if it is not running."""
        server, _ = ensure_server(
            self.states[index], database_url=self.database_url, redis_url=self.redis_url
        )
        return server


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[SharedLeaseCluster]:
    with fresh_database() as url:
        cluster = SharedLeaseCluster(
            states=[tmp_path_factory.mktemp(f"prefect-{name}") for name in ("first", "second")],
            database_url=url.replace("postgresql://", "postgresql+asyncpg://", 1),
            redis_url=redis_url,
        )
        try:
            # One after the other: each server migrates the database as it starts.
            cluster.server(0)
            cluster.server(1)
            yield cluster
        finally:
            for state in cluster.states:
                stop_server(state)


async def _active_slots(client: PrefectClient, limit: str) -> int:
    return (await client.read_global_concurrency_limit_by_name(limit)).active_slots


def test_a_lease_outlives_the_killed_server_that_granted_it(cluster: SharedLeaseCluster) -> None:
    first, second = cluster.server(0), cluster.server(1)
    limit = f"gpu-{uuid.uuid4().hex[:8]}"

    async def take_on_first() -> UUID:
        async with PrefectClient(first.api_url) as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=limit, limit=2)
            )
            granted = await client.increment_concurrency_slots_with_lease(
                [limit], 1, "concurrency", lease_duration=60
            )
            return UUID(granted.json()["lease_id"])

    lease_id = asyncio.run(take_on_first())
    assert _lease_stored_in_redis(lease_id)

    os.killpg(first.pid, signal.SIGKILL)
    stop_server(cluster.states[0])  # reaps the killed server and forgets its record

    async def renew_and_release_on_second() -> tuple[int, int]:
        async with PrefectClient(second.api_url) as client:
            await client.renew_concurrency_lease(lease_id, lease_duration=60)
            held = await _active_slots(client, limit)
            await client.release_concurrency_slots_with_lease(lease_id)
            return held, await _active_slots(client, limit)

    held, after_release = asyncio.run(renew_and_release_on_second())
    assert (held, after_release) == (1, 0)
    assert not _lease_stored_in_redis(lease_id)


def test_leases_granted_by_different_servers_count_against_one_limit(
    cluster: SharedLeaseCluster,
) -> None:
    first, second = cluster.server(0), cluster.server(1)
    limit = f"gpu-{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[int, int]:
        async with PrefectClient(first.api_url) as a, PrefectClient(second.api_url) as b:
            await a.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=limit, limit=1)
            )
            granted = await a.increment_concurrency_slots_with_lease(
                [limit], 1, "concurrency", lease_duration=60
            )
            with pytest.raises(PrefectHTTPStatusError) as refused:
                await b.increment_concurrency_slots_with_lease(
                    [limit], 1, "concurrency", lease_duration=60
                )
            await b.release_concurrency_slots_with_lease(UUID(granted.json()["lease_id"]))
            return refused.value.response.status_code, await _active_slots(a, limit)

    refused_status, after_release = asyncio.run(main())
    assert refused_status == 423  # the limit is full, whichever server is asked
    assert after_release == 0
