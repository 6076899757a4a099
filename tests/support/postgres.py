"""A fresh PostgreSQL database per test session on the local server (127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

POSTGRES_HOST = os.environ.get("GPUFLOW_TEST_POSTGRES", "postgres@127.0.0.1:5432")
_MAINTENANCE_DB = "test"


def _url(database: str) -> str:
    return f"postgresql://{POSTGRES_HOST}/{database}"


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(_url(_MAINTENANCE_DB), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """``postgresql://`` URL of a new, empty database, dropped afterwards."""
    name = f"gpuflow_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_HOST}: {exc}")
    try:
        yield _url(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
