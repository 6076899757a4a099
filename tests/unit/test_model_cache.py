from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpuflow.core.errors import ObjectNotFoundError
from gpuflow.core.request import ModelRef
from gpuflow.ops import samples
from gpuflow.storage.local import LocalObjectStore
from gpuflow.storage.model_cache import MANIFEST, ModelCache
from gpuflow.storage.uri import ObjectInfo

MODEL = ModelRef(name="standin", revision="v1")


class CountingStore(LocalObjectStore):
    """A file:// store that counts the objects it serves (and serves them slowly)."""

    _block_type_slug = "test-counting-object-store"  # never shadow the real block type

    def download(self, uri: str, destination: Path) -> ObjectInfo:
        with (self.root / "downloads.log").open("a") as log:
            log.write(uri + "\n")
        time.sleep(0.05)
        return super().download(uri, destination)

    def downloads(self) -> int:
        log = self.root / "downloads.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    store = CountingStore(root=tmp_path / "store")
    samples.write_model(store.root / "models" / MODEL.name / MODEL.revision, MODEL.name, "v1")
    return store


def _source(store: LocalObjectStore) -> str:
    return store.uri_for(f"models/{MODEL.name}/{MODEL.revision}")


def test_first_use_downloads_and_writes_a_manifest(tmp_path: Path, store: CountingStore) -> None:
    cache = ModelCache(root=tmp_path / "nas" / "models")
    cached = cache.ensure(MODEL, store, _source(store))
    assert cached.downloaded and cached.bytes_downloaded > 0
    manifest = json.loads((cached.path / MANIFEST).read_text())
    assert {entry["path"] for entry in manifest["files"]} == {"config.json", "weights.npz"}
    assert manifest["source"] == _source(store)
    again = cache.ensure(MODEL, store, _source(store))
    assert not again.downloaded and store.downloads() == 2


def test_concurrent_requests_cause_one_download(tmp_path: Path, store: CountingStore) -> None:
    cache = ModelCache(root=tmp_path / "nas" / "models")
    results = []

    def ask() -> None:
        results.append(cache.ensure(MODEL, store, _source(store)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.downloads() == 2  # two files, fetched once
    assert sum(result.downloaded for result in results) == 1
    assert all(cache.verify(result.path) for result in results)


def test_a_truncated_cached_file_is_detected_and_fetched_again(
    tmp_path: Path, store: CountingStore
) -> None:
    cache = ModelCache(root=tmp_path / "nas" / "models")
    cached = cache.ensure(MODEL, store, _source(store))
    weights = cached.path / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:100])
    assert not cache.verify(cached.path)
    repaired = cache.ensure(MODEL, store, _source(store))
    assert repaired.downloaded and cache.verify(repaired.path)


def test_a_lock_held_by_a_killed_process_does_not_block(
    tmp_path: Path, store: CountingStore
) -> None:
    cache = ModelCache(root=tmp_path / "nas" / "models", lock_timeout_s=20)
    lock = cache.model_dir(MODEL).with_name(".v1.lock")
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
            str(lock),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert cache.ensure(MODEL, store, _source(store)).downloaded


def test_an_empty_or_missing_source_names_the_uri_and_leaves_nothing(
    tmp_path: Path, store: CountingStore
) -> None:
    cache = ModelCache(root=tmp_path / "nas" / "models")
    missing = store.uri_for("models/ghost/v9")
    with pytest.raises(ObjectNotFoundError, match="ghost/v9"):
        cache.ensure(ModelRef(name="ghost", revision="v9"), store, missing)
    assert not (cache.root / "ghost").exists()  # no directory, no lock: nothing at all


def test_revision_names_never_collide_with_the_cache_s_own_files(
    tmp_path: Path, store: CountingStore
) -> None:
    cache = ModelCache(root=tmp_path / "nas" / "models")
    source = _source(store)
    first = cache.ensure(MODEL, store, source)
    for revision in ("v1.lock", "v1.inuse", "v1.partial"):
        other = ModelRef(name=MODEL.name, revision=revision)
        with cache.hold(other):
            cache.ensure(other, store, source)
    assert cache.is_ready(MODEL) and cache.verify(first.path)
    with cache.hold(MODEL):
        assert not cache.ensure(MODEL, store, source).downloaded


def test_eviction_skips_a_fill_in_progress_that_already_holds_a_manifest(
    tmp_path: Path, store: CountingStore
) -> None:
    cache = ModelCache(root=tmp_path / "nas" / "models")
    ready = cache.ensure(MODEL, store, _source(store))
    leftover = ready.path.with_name(".v2.partial")
    shutil.copytree(ready.path, leftover)  # a fill killed after writing its manifest
    assert cache.evict_least_recently_used(0) == [ready.path]
    assert leftover.is_dir()
