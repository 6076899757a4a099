"""Fixtures of the environment fabric tests: one offline wheelhouse per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow.envs.catalog import EnvCatalog
from tests.support.env_kit import build_wheelhouse, make_job


@pytest.fixture(scope="session")
def lock_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uv cache used to build wheels and lock jobs (never a fabric's cache)."""
    return tmp_path_factory.mktemp("lock-cache")


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, lock_cache: Path) -> Path:
    return build_wheelhouse(tmp_path_factory.mktemp("wheels"), lock_cache)


@pytest.fixture
def job(tmp_path: Path, wheelhouse: Path, lock_cache: Path) -> Path:
    return make_job(tmp_path / "jobs" / "demo", str(wheelhouse), lock_cache)


@pytest.fixture
def fabric(tmp_path: Path) -> EnvCatalog:
    return EnvCatalog(root=tmp_path / "nas", build_timeout_s=120)
