"""Only a service that is not there skips, and CI's switch turns even that into a failure."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from tests.support.postgres import POSTGRES_HOST, fresh_database
from tests.support.services import REQUIRE_SERVICES_ENV

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_postgres_that_is_not_there_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)
    server = f"postgres@127.0.0.1:{_closed_port()}"
    with (
        pytest.raises(pytest.skip.Exception, match=f"no PostgreSQL at {server}"),
        fresh_database(server),
    ):
        pass


def test_ci_fails_a_test_whose_postgres_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "1")
    server = f"postgres@127.0.0.1:{_closed_port()}"
    with (
        pytest.raises(pytest.fail.Exception, match=f"no PostgreSQL at {server}.*failure"),
        fresh_database(server),
    ):
        pass


def test_a_postgres_that_answers_with_an_error_fails_the_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing maintenance database is a broken setup, not a missing service."""
    monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)
    with (
        pytest.raises(asyncpg.InvalidCatalogNameError, match="gpuflow_no_such_database"),
        fresh_database(POSTGRES_HOST, maintenance_db="gpuflow_no_such_database"),
    ):
        pass


def test_a_fresh_database_is_there_and_empty() -> None:
    async def tables(url: str) -> int:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            count: int = await connection.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            return count
        finally:
            await connection.close()

    with fresh_database() as url:
        assert asyncio.run(tables(url)) == 0
