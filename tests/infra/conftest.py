"""Markers of the infrastructure checks."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: runs an external scanner (checkov) over infra/terraform; about 10 s each",
    )
