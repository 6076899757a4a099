"""Shared fixtures: one real Prefect server (SQLite) per test session, an embedded layout."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout, repository_jobs_root
from gpuflow.ops.local_server import LocalServer, ensure_server, stop_server
from tests.support.kept_caches import keep_caches

# `deployed`: gpuflow bootstrapped, `prefect deploy --all`, a process worker (one per session).
pytest_plugins = ["tests.support.deployed"]

# Fixtures that start or need a real service; a test using one is an integration test.
SERVICE_FIXTURES = frozenset(
    {
        "prefect_server",
        "i2v_env",
        "wan_env",
        "deployed",
        "moto_server",
        "moto_url",
        "wheelhouse",
        "docker_cli",
        "flow_image",
    }
)
# Helpers a test module imports to reach a service from the test's body.
SERVICE_HELPERS = frozenset({"fresh_database", "ensure_server"})


def file_seconds(item: pytest.Item) -> float:
    """The ``suite_seconds`` a test's file declares (0 without the marker)."""
    marker = item.get_closest_marker("suite_seconds")
    return float(marker.args[0]) if marker is not None else 0.0


def longest_files_first(items: list[pytest.Item]) -> None:
    """Order the files by the seconds they declare (from a measured `make test`), longest
    first, the others after them as collected. `make test` hands whole files to its
    workers in this order (``--dist loadfile --no-loadscope-reorder``): a file of minutes
    started last would keep one worker busy while the others stand idle."""
    seconds: dict[Path, float] = {}
    for item in items:
        seconds[item.path] = max(seconds.get(item.path, 0.0), file_seconds(item))
    items.sort(key=lambda item: -seconds[item.path])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that needs a service but is not marked ``integration``: `make unit`
    (``-m "not integration"``) must never start a server or reach a database. Then start
    the longest files first."""
    longest_files_first(items)
    unmarked = []
    for item in items:
        if item.get_closest_marker("integration") is not None:
            continue
        fixtures = set(getattr(item, "fixturenames", ())) & SERVICE_FIXTURES
        module = getattr(item, "module", None)
        helpers = {name for name in SERVICE_HELPERS if hasattr(module, name)}
        if fixtures or helpers:
            unmarked.append(f"{item.nodeid} (uses {', '.join(sorted(fixtures | helpers))})")
    if unmarked:
        raise pytest.UsageError(
            "tests that need a service must be marked integration:\n  " + "\n  ".join(unmarked)
        )


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default's state directory for the whole session (server, NAS, store)."""
    return tmp_path_factory.mktemp("gpuflow-state")


# Where one record of Prefect's server log starts: `06:18:36.556 | ERROR   | prefect...`.
_LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| ", re.MULTILINE)
# In WAL mode SQLite answers "database is locked" at once, whatever the busy timeout, to a
# transaction that read and then writes after another one wrote. Prefect's server logs it (a
# worker heartbeat, a state change) when tests load a 2-core machine: a limit of SQLite under
# concurrent writers, why production runs the server on PostgreSQL, and not the failure this
# check is for (a service that breaks on every loop, a route that crashes).
_SQLITE_CONTENTION = "sqlite3.OperationalError: database is locked"


def server_tracebacks(server_log: str) -> list[str]:
    """The log records of a Prefect server that carry a traceback, less SQLite contention."""
    starts = [match.start() for match in _LOG_RECORD.finditer(server_log)] + [len(server_log)]
    records = [server_log[start:end] for start, end in itertools.pairwise(starts)]
    return [
        record for record in records if "Traceback" in record and _SQLITE_CONTENTION not in record
    ]


@pytest.fixture(scope="session")
def prefect_server(state_dir: Path) -> Iterator[LocalServer]:
    """A real Prefect server on SQLite, started once: it takes ~15 s and runs migrations."""
    server, _ = ensure_server(state_dir)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # for subprocesses (the CLI tests)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server
            # Deliver queued logs and events while the server still listens.
            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
            # A server-side traceback (a scheduler loop that breaks, a route that crashes) fails
            # no request a test makes: only the server's log shows it.
            failures = server_tracebacks((state_dir / "server.log").read_text(errors="replace"))
            if failures:
                pytest.fail(
                    f"the session's Prefect server logged {len(failures)} traceback(s); the "
                    f"first:\n{failures[0][:4000]}"
                )
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        stop_server(state_dir)


@pytest.fixture(scope="session")
def layout(state_dir: Path) -> EmbeddedLayout:
    layout = EmbeddedLayout(state_dir)
    keep_caches(layout.nas_root)
    layout.seed_samples()
    return layout


@pytest.fixture
def gpu_limit_name() -> str:
    """A GPU limit of its own per test, so tests cannot see each other's slots."""
    return f"gpu-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stack_name(prefect_server: LocalServer, layout: EmbeddedLayout, gpu_limit_name: str) -> str:
    """A saved stack on the session server with a 2-slot GPU limit of its own."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    stack = layout.stack().model_copy(update={"gpu_limit": gpu_limit_name})
    asyncio.run(bootstrap(stack, name, gpu_slots=2))
    return name


@pytest.fixture(scope="session")
def i2v_env(layout: EmbeddedLayout) -> ResolvedEnv:
    """The reference job's environment, built with real uv once per session."""
    return layout.stack().environments.resolve(repository_jobs_root() / "i2v")


@pytest.fixture(scope="session")
def wan_env(layout: EmbeddedLayout) -> ResolvedEnv:
    """The wan-i2v job's environment (torch, diffusers, transformers), built once per
    session, and the tiny Wan model it builds, seeded into the session's store."""
    env = layout.stack().environments.resolve(repository_jobs_root() / "wan-i2v")
    layout.seed_wan_tiny_model(env)
    return env
