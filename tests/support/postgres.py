"""A fresh PostgreSQL database per test session on the local server (127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import asyncpg

from tests.support.services import service_missing

POSTGRES_HOST = os.environ.get("GPUFLOW_TEST_POSTGRES", "postgres@127.0.0.1:5432")
MAINTENANCE_DB = "test"


def _url(server: str, database: str) -> str:
    return f"postgresql://{server}/{database}"


async def _admin(server: str, maintenance_db: str, statement: str) -> None:
    connection = await asyncpg.connect(_url(server, maintenance_db), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_database(
    server: str = POSTGRES_HOST, maintenance_db: str = MAINTENANCE_DB
) -> Iterator[str]:
    """``postgresql://`` URL of a new, empty database on ``server``, dropped afterwards.

    Only a server that is not there skips (see ``service_missing``): nothing listening
    or no answer in time. A server that answers with an error (bad
    credentials, a missing maintenance database, no right to create databases) is a
    broken setup and fails the test with PostgreSQL's own error.
    """
    name = f"gpuflow_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(server, maintenance_db, f'CREATE DATABASE "{name}"'))
    except OSError as exc:  # refused, unreachable, or no answer in time (TimeoutError)
        service_missing(f"no PostgreSQL at {server}: {exc}")
    try:
        yield _url(server, name)
    finally:
        asyncio.run(
            _admin(server, maintenance_db, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
