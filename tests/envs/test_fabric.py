"""The environment fabric with real uv builds against an offline wheelhouse."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.envs.catalog import METADATA, EnvCatalog
from tests.support.env_kit import GatedWheelServer, lock_job, make_job, set_source_marker
from tests.support.services import service_missing

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _bulk_file(env_root: Path) -> Path:
    matches = list(env_root.glob(".venv/lib/python*/site-packages/bulkpkg/table.bin"))
    assert len(matches) == 1, matches
    return matches[0]


def _worker(nas_root: Path, job: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.envs.resolve_worker", str(nas_root), str(job)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killing it kills its uv too
    )


def _wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def test_build_then_reuse_with_console_script_and_metadata(fabric: EnvCatalog, job: Path) -> None:
    first = fabric.resolve(job)
    assert first.built
    second = fabric.resolve(job)
    assert (second.key, second.built) == (first.key, False)

    # The console scripts work from the env's final path.
    shebang = first.script("tinytool").read_text().splitlines()[0]
    assert shebang == f"#!{first.python}"
    run = subprocess.run([str(first.script("demo-job"))], capture_output=True, text=True)
    assert run.stdout.strip() == "demo-job v1"
    assert subprocess.run(
        [str(first.script("tinytool"))], capture_output=True, text=True
    ).stdout.strip() == ("tinytool 1.0.0")

    metadata = json.loads((first.root / METADATA).read_text())
    assert metadata["status"] == "ready"
    assert metadata["packages"] == {"demo-job": "0.1.0", "tinytool": "1.0.0", "bulkpkg": "2.0.0"}
    assert metadata["link_mode"] == "hardlink"
    assert metadata["size_bytes"] > 256 * 1024
    for field in ("build_seconds", "builder", "created", "last_used", "python", "uv_version"):
        assert metadata[field], field
    assert (first.root / "uv.lock").read_bytes() == (job / "uv.lock").read_bytes()
    assert (first.root / "pyproject.toml").read_bytes() == (job / "pyproject.toml").read_bytes()
    # Bytecode is compiled at build time (this machine sets PYTHONDONTWRITEBYTECODE).
    assert list(first.root.glob(".venv/lib/python*/site-packages/tinytool/__pycache__/*.pyc"))


def test_changed_sources_get_a_new_env_that_shares_package_files(
    fabric: EnvCatalog, job: Path
) -> None:
    first = fabric.resolve(job)
    set_source_marker(job, "v2")
    second = fabric.resolve(job)
    assert second.built and second.key != first.key
    assert subprocess.run(
        [str(second.script("demo-job"))], capture_output=True, text=True
    ).stdout.strip() == ("demo-job v2")

    a, b = _bulk_file(first.root).stat(), _bulk_file(second.root).stat()
    assert a.st_ino == b.st_ino, "the package file is not shared between the two envs"
    assert a.st_nlink > 2  # the cache's copy and the two envs

    # Bytecode is compiled once and shared too, and each env's interpreter uses it with
    # its own paths (the loader fixes co_filename).
    pycs = [
        next(env.root.glob(".venv/lib/python*/site-packages/tinytool/__pycache__/*.pyc"))
        for env in (first, second)
    ]
    assert pycs[0].stat().st_ino == pycs[1].stat().st_ino
    probe = subprocess.run(
        [
            str(second.python),
            "-v",
            "-c",
            "import tinytool; print(tinytool.main.__code__.co_filename)",
        ],
        capture_output=True,
        text=True,
    )
    assert f"code object from '{pycs[1]}'" in probe.stderr, "the shared .pyc was not used"
    assert probe.stdout.strip().startswith(str(second.venv))
    # The job record remembers the earlier key, for a rollback.
    record = fabric.job_record("demo")
    assert record is not None
    assert (record.current, record.history) == (second.key, [first.key])


_PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.system", "os.fork"})
_spawned: list[str] = []
_watching = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _watching and (event in _PROCESS_EVENTS or event.startswith("os.exec")):
        _spawned.append(event)


sys.addaudithook(_audit)


def test_warm_resolve_starts_no_process_and_uses_the_stat_index(
    fabric: EnvCatalog, job: Path
) -> None:
    global _watching
    built = fabric.resolve(job)
    # Age the sources past the racy window so the stat index may record them.
    old = time.time() - 60
    for path in job.rglob("*"):
        os.utime(path, (old, old))
    assert fabric.resolve(job).key == built.key  # hashes once more, records the stats
    assert list((fabric.envs_dir / ".sources").glob("*.json")), "no stat index entry"

    _watching = True
    try:
        warm = fabric.resolve(job)
    finally:
        _watching = False
    assert (warm.key, warm.built) == (built.key, False)
    assert _spawned == [], f"a warm resolve started processes: {_spawned}"

    # Content changed with size and mtime preserved is still noticed (ctime, inode).
    source = job / "src" / "demo_job" / "__init__.py"
    source.write_text(source.read_text().replace('"v1"', '"v9"'))
    os.utime(source, (old, old))
    assert fabric.key(job) != built.key


def test_six_concurrent_resolvers_cause_one_build(
    tmp_path: Path, wheelhouse: Path, lock_cache: Path
) -> None:
    nas = tmp_path / "nas"
    server = GatedWheelServer(wheelhouse)
    with server.running():
        server.gate.set()  # locking reads the wheels
        job = make_job(tmp_path / "jobs" / "demo", server.url, lock_cache)
        server.gate.clear()
        server.wheel_requested.clear()
        workers = [_worker(nas, job) for _ in range(6)]
        try:
            assert all(w.stdout and w.stdout.readline().strip() == "resolving" for w in workers)
            # The gate is closed: the first builder is stuck inside uv while all six
            # are resolving, so every one of them overlaps the build.
            _wait_for(server.wheel_requested.is_set, 60, "uv to ask for a wheel")
            server.gate.set()
            outputs = [w.communicate(timeout=120) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    os.killpg(w.pid, signal.SIGKILL)
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [w.returncode for w in workers] == [0] * 6, [err for _, err in outputs]
    assert len({r["key"] for r in results}) == 1
    assert sum(r["built"] for r in results) == 1, results
    builder_pid = json.loads((nas / "envs" / results[0]["key"] / METADATA).read_text())["builder"]
    winner = next(w for w, r in zip(workers, results, strict=True) if r["built"])
    assert builder_pid.endswith(f":{winner.pid}")


def test_killed_build_is_not_ready_and_the_next_request_builds_cleanly(
    tmp_path: Path, wheelhouse: Path, lock_cache: Path
) -> None:
    fabric = EnvCatalog(root=tmp_path / "nas", build_timeout_s=120)
    server = GatedWheelServer(wheelhouse)
    with server.running():
        server.gate.set()
        job = make_job(tmp_path / "jobs" / "demo", server.url, lock_cache)
        server.gate.clear()
        server.wheel_requested.clear()
        worker = _worker(fabric.root, job)
        try:
            _wait_for(server.wheel_requested.is_set, 60, "uv to ask for a wheel")
        finally:
            os.killpg(worker.pid, signal.SIGKILL)  # the builder and its uv die mid-build
            worker.wait(timeout=30)
        key = fabric.key(job)
        assert fabric.env_dir(key).is_dir(), "the build had not started when killed"
        assert not fabric.ready(key)
        assert not (fabric.env_dir(key) / METADATA).exists()
        with pytest.raises(EnvironmentBuildError, match="no environment yet"):
            fabric.resolve_job("demo")

        server.gate.set()
        env = fabric.resolve(job)
    assert (env.key, env.built) == (key, True)
    assert subprocess.run(
        [str(env.script("demo-job"))], capture_output=True, text=True
    ).stdout.strip() == ("demo-job v1")


def test_unparsable_lock_is_refused_naming_the_file(fabric: EnvCatalog, job: Path) -> None:
    (job / "uv.lock").write_text("version = 1\n[[package]\nname = ")
    with pytest.raises(EnvironmentBuildError, match=r"uv\.lock is not valid TOML"):
        fabric.resolve(job)
    assert fabric.env_keys() == []


def test_lock_uv_rejects_reports_uv_error_and_leaves_nothing(
    fabric: EnvCatalog, job: Path, wheelhouse: Path, lock_cache: Path
) -> None:
    lock = job / "uv.lock"
    # Valid TOML, but the job depends on a package the lock does not describe.
    lock.write_text(lock.read_text().replace('{ name = "bulkpkg" },', '{ name = "ghost" },', 1))
    with pytest.raises(EnvironmentBuildError) as raised:
        fabric.resolve(job)
    assert "uv could not build the environment" in str(raised.value)
    assert "Failed to parse `uv.lock`" in raised.value.details, raised.value.details
    assert "ghost" in raised.value.details
    assert fabric.env_keys() == [], "a failed build left a directory behind"

    # Fixing the lock is all it takes: the next request builds cleanly.
    (job / "uv.lock").unlink()
    lock_job(job, str(wheelhouse), lock_cache)
    assert fabric.resolve(job).built


def test_missing_package_names_it_and_leaves_nothing(
    fabric: EnvCatalog, tmp_path: Path, wheelhouse: Path, lock_cache: Path
) -> None:
    private = tmp_path / "private-wheels"
    shutil.copytree(wheelhouse, private)
    job = make_job(tmp_path / "jobs" / "demo", str(private), lock_cache)
    for wheel in private.glob("bulkpkg-*.whl"):
        wheel.unlink()
    with pytest.raises(EnvironmentBuildError) as raised:
        fabric.resolve(job)
    assert "bulkpkg" in raised.value.details
    assert fabric.env_keys() == []


def test_cache_on_another_filesystem_reports_the_copy_fallback(
    tmp_path: Path, job: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        service_missing("needs /dev/shm on a filesystem other than the test's tmp dir")
    cache = shm / f"gpuflow-test-cache-{os.getpid()}-{tmp_path.name}"
    try:
        fabric = EnvCatalog(root=tmp_path / "nas", cache_dir=cache, build_timeout_s=120)
        with caplog.at_level(logging.WARNING, logger="gpuflow.envs"):
            env = fabric.resolve(job)
        assert env.link_mode == "copy"
        assert fabric.resolve(job).link_mode == "copy"  # warm resolves say so too
        metadata = fabric.metadata(env.key)
        assert metadata is not None
        assert (metadata.link_mode, metadata.hardlinked_files) == ("copy", 0)
        assert _bulk_file(env.root).stat().st_nlink == 1
        assert any("COPY" in record.getMessage() for record in caplog.records)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 192 KiB tmpfs: too small for the 256 KiB bulkpkg the demo job installs."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        service_missing("no mount/umount commands here")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        service_missing(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run([umount, str(mountpoint)], check=True)


def test_full_disk_reports_it_and_leaves_nothing_ready(tiny_filesystem: Path, job: Path) -> None:
    fabric = EnvCatalog(root=tiny_filesystem / "nas", build_timeout_s=120)
    with pytest.raises(EnvironmentBuildError) as raised:
        fabric.resolve(job)
    assert "No space left on device" in f"{raised.value}{raised.value.details}"
    assert fabric.env_keys() == []
    key = fabric.key(job)
    assert not fabric.ready(key)
