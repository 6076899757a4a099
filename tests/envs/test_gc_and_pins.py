"""Pins (rollback), job records, holds and garbage collection with real envs."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.envs.catalog import METADATA, EnvCatalog
from gpuflow.envs.gc import GcPolicy, collect_garbage
from tests.support.env_kit import set_source_marker

pytestmark = pytest.mark.integration

_MONTH_S = 30 * 24 * 3600


def _age(fabric: EnvCatalog, key: str, seconds: float) -> None:
    """Make ``key`` look built and last used ``seconds`` ago (mtime is its last use)."""
    metadata = fabric.metadata(key)
    assert metadata is not None
    past = metadata.created - timedelta(seconds=seconds)
    path = fabric.env_dir(key) / METADATA
    path.write_text(
        metadata.model_copy(update={"created": past, "last_used": past}).model_dump_json()
    )
    os.utime(path, (past.timestamp(), past.timestamp()))


def _versions(fabric: EnvCatalog, job: Path, count: int) -> list[str]:
    keys = []
    for version in range(1, count + 1):
        set_source_marker(job, f"v{version}")
        keys.append(fabric.resolve(job).key)
    return keys


def test_pin_rolls_back_and_unpin_follows_sources(fabric: EnvCatalog, job: Path) -> None:
    old, new = _versions(fabric, job, 2)
    assert fabric.resolve(job).key == new
    fabric.pin("demo", old, reason="v2 broke the output")
    pinned = fabric.resolve(job)
    assert (pinned.key, pinned.pinned, pinned.built) == (old, True, False)
    assert fabric.resolve_job("demo").key == old  # what a pod without sources gets
    # A prebuild still builds and records what the sources say, pin or not.
    assert fabric.ensure(job).key == new
    assert fabric.unpin("demo")
    assert fabric.resolve(job).key == new
    assert fabric.resolve_job("demo").key == new


def test_pin_to_unknown_key_is_refused_naming_it(fabric: EnvCatalog, job: Path) -> None:
    fabric.resolve(job)
    with pytest.raises(EnvironmentBuildError, match="'feedfacefeedfacefeedface'"):
        fabric.pin("demo", "feedfacefeedfacefeedface")
    assert fabric.pin_of("demo") is None


def test_gc_evicts_idle_envs_but_never_pinned_held_or_current_ones(
    fabric: EnvCatalog, job: Path
) -> None:
    idle, pinned, held, current = _versions(fabric, job, 4)
    fabric.pin("other-job", pinned)
    for key in (idle, pinned, held, current):
        _age(fabric, key, _MONTH_S)
    wreck = fabric.env_dir("0123456789abcdef01234567")
    (wreck / ".venv" / "bin").mkdir(parents=True)  # a build that died: no ready marker
    policy = GcPolicy(max_idle=timedelta(days=14))

    with fabric.hold(held):
        dry = {d.key: d.action for d in collect_garbage(fabric, policy, dry_run=True)}
        assert dry[idle] == "would evict" and fabric.ready(idle)
        decisions = {d.key: (d.action, d.reason) for d in collect_garbage(fabric, policy)}
        assert decisions[idle][0] == "evicted"
        assert decisions[pinned] == ("kept", "pinned by job 'other-job'")
        assert decisions[held] == ("kept", "held by a running flow")
        assert decisions[current] == ("kept", "current env of job 'demo'")
        assert decisions[wreck.name] == ("evicted", "unfinished build")
        assert not fabric.env_dir(idle).exists() and not wreck.exists()
        for key in (pinned, held, current):
            assert fabric.ready(key), key
        assert list(fabric.trash_dir().iterdir()) == []
        # The bytecode of the evicted version's own code went with it; shared stays.
        store = list(fabric.bytecode_dir.iterdir())
        assert store and all(entry.stat().st_nlink > 1 for entry in store)

    # Released, the held env is an ordinary idle one.
    after = {d.key: d.action for d in collect_garbage(fabric, policy)}
    assert after[held] == "evicted"
    # The job's next run after evicting its current env rebuilds it (include-current).
    everything = GcPolicy(max_idle=timedelta(days=14), keep_current=False)
    assert {d.key: d.action for d in collect_garbage(fabric, everything)}[current] == "evicted"
    rebuilt = fabric.resolve(job)
    assert (rebuilt.key, rebuilt.built) == (current, True)


def test_gc_keeps_recently_used_and_evicts_by_age(fabric: EnvCatalog, job: Path) -> None:
    old, _ = _versions(fabric, job, 2)
    policy = GcPolicy(max_idle=timedelta(days=14))
    assert {d.key: d.action for d in collect_garbage(fabric, policy)}[old] == "kept"
    _age(fabric, old, 10 * 24 * 3600)
    os.utime(fabric.env_dir(old) / METADATA)  # built 10 days ago, used just now
    assert {d.key: d.action for d in collect_garbage(fabric, policy)}[old] == "kept"
    by_age = GcPolicy(max_idle=timedelta(days=14), max_age=timedelta(days=7))
    assert {d.key: d.reason for d in collect_garbage(fabric, by_age)}[old].startswith("built")
    assert not fabric.env_dir(old).exists()


def test_hold_refuses_an_evicted_env(fabric: EnvCatalog, job: Path) -> None:
    old, _ = _versions(fabric, job, 2)
    _age(fabric, old, _MONTH_S)
    collect_garbage(fabric, GcPolicy())
    with pytest.raises(EnvironmentBuildError, match="no longer ready"), fabric.hold(old):
        pass
