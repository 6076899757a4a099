"""The Prefect variables that gpuflow's work-pool templates read, set by bootstrap.

The kubernetes and ecs templates default their stack-specific values (namespace, NAS
claim, cluster, roles, file system) to ``{{ prefect.variables.gpuflow_... }}``. Bootstrap
sets each variable a pool reads: from the stack's compute targets where they know it,
else it keeps the value already there (Terraform's prefect module sets them too), else it
writes gpuflow's default. What is left has no sane default (an ECS role, a file system):
bootstrap names it, because a run would otherwise render it as an empty string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from pydantic import BaseModel, Field

from gpuflow.pipeline.stack import GpuflowStack


@dataclass(frozen=True)
class PoolVariables:
    names: tuple[str, ...]  # the Prefect variables the pool's template reads
    defaults: dict[str, str]  # the ones gpuflow has a default for


def pool_variables(pool_type: str) -> PoolVariables:
    """The Prefect variables that gpuflow's template for ``pool_type`` reads."""
    if pool_type == "kubernetes":
        from gpuflow.compute.kubernetes import pool as kubernetes_pool

        return PoolVariables(
            tuple(kubernetes_pool.PREFECT_VARIABLES.values()),
            kubernetes_pool.PREFECT_VARIABLE_DEFAULTS,
        )
    if pool_type == "ecs":
        from gpuflow.compute.ecs import pool as ecs_pool

        return PoolVariables(
            tuple(ecs_pool.PREFECT_VARIABLES.values()), ecs_pool.PREFECT_VARIABLE_DEFAULTS
        )
    if pool_type == "docker":
        from gpuflow.compute import docker_pool

        return PoolVariables(
            tuple(docker_pool.PREFECT_VARIABLES.values()), docker_pool.PREFECT_VARIABLE_DEFAULTS
        )
    return PoolVariables((), {})  # Prefect's own template (process) reads none


class PoolVariablesReport(BaseModel):
    set_from_stack: dict[str, str] = Field(default_factory=dict)
    kept: list[str] = Field(default_factory=list)
    defaulted: dict[str, str] = Field(default_factory=dict)
    missing: dict[str, list[str]] = Field(default_factory=dict)  # pool type -> names


def stack_pool_variables(stack: GpuflowStack) -> dict[str, str]:
    """What the stack's compute targets say about where its flows run (the GPU job's
    target wins over the postprocess target)."""
    values: dict[str, str] = {}
    for target in (stack.postprocess_compute, stack.compute):
        if target is not None:
            values.update(target.flow_pool_variables())
    return values


async def ensure_pool_variables(
    client: PrefectClient, stack: GpuflowStack, pool_types: Sequence[str]
) -> PoolVariablesReport:
    report = PoolVariablesReport()
    given = stack_pool_variables(stack)
    done: set[str] = set()
    for pool_type in pool_types:
        variables = pool_variables(pool_type)
        for name in variables.names:
            if name in done:
                continue
            existing = await client.read_variable_by_name(name)
            if name in given:
                if existing is None:
                    await client.create_variable(VariableCreate(name=name, value=given[name]))
                elif existing.value != given[name]:
                    await client.update_variable(VariableUpdate(name=name, value=given[name]))
                report.set_from_stack[name] = given[name]
            elif existing is not None and existing.value not in (None, ""):
                report.kept.append(name)
            elif name in variables.defaults:
                value = variables.defaults[name]
                if existing is None:
                    await client.create_variable(VariableCreate(name=name, value=value))
                else:
                    await client.update_variable(VariableUpdate(name=name, value=value))
                report.defaulted[name] = value
            else:
                report.missing.setdefault(pool_type, []).append(name)
                continue
            done.add(name)
    return report
