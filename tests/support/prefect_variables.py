"""Prefect variables set for one test on the session's server, and put back after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate

# A value that means "no such variable while the test runs" (other tests on the same
# server, `gpuflow bootstrap` among them, may have left one).
ABSENT = object()


@asynccontextmanager
async def prefect_variables(client: PrefectClient, values: dict[str, Any]) -> AsyncIterator[None]:
    before = {name: await client.read_variable_by_name(name) for name in values}
    for name, value in values.items():
        if value is ABSENT:
            if before[name] is not None:
                await client.delete_variable_by_name(name)
        elif before[name] is None:
            await client.create_variable(VariableCreate(name=name, value=value))
        else:
            await client.update_variable(VariableUpdate(name=name, value=value))
    try:
        yield
    finally:
        for name, previous in before.items():
            if previous is None:
                if values[name] is not ABSENT:
                    await client.delete_variable_by_name(name)
            elif values[name] is ABSENT:
                await client.create_variable(VariableCreate(name=name, value=previous.value))
            else:
                await client.update_variable(VariableUpdate(name=name, value=previous.value))
