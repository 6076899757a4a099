"""The rendered work-pool templates and RBAC in ``deployments/`` are what the code builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow.ops.pool_templates import rendered_files

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"


@pytest.mark.parametrize("relative", sorted(rendered_files()))
def test_the_committed_file_is_the_rendered_one(relative: str) -> None:
    assert (DEPLOYMENTS / relative).read_text() == rendered_files()[relative], (
        f"deployments/{relative} is stale: run `python -m gpuflow.ops.pool_templates` "
        "and commit the result"
    )
