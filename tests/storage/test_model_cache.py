"""The model cache filled from S3 (moto over HTTP) and https (a Range file server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuflow.core.errors import IntegrityError
from gpuflow.core.request import ModelRef
from gpuflow.storage.https import HttpSource
from gpuflow.storage.model_cache import MANIFEST, ModelCache
from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.storage.transfer import MiB, TransferSettings, journal_path
from tests.support.files import random_file, sha256_of
from tests.support.s3_servers import CountingProxy, MotoServer, RangeFileServer

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
MODEL_FILES = {
    "config.json": 300,
    "weights/part-1.bin": 6 * MiB + 11,
    "weights/part-2.bin": 2 * MiB,
}
MODEL = ModelRef(name="tiny-i2v", revision="r1")


def _publish_model(store: S3ObjectStore, bucket: str, tmp_path: Path) -> str:
    source = tmp_path / "source-model"
    for relative, size in MODEL_FILES.items():
        random_file(source / relative, size)
    prefix = f"s3://{bucket}/models/{MODEL.name}/{MODEL.revision}"
    store.upload_prefix(source, prefix)
    return prefix


def _fresh(store: S3ObjectStore) -> S3ObjectStore:
    """The same store with a new client: its connections open after a proxy reset."""
    return S3ObjectStore(
        **store.model_dump(exclude={"credentials", "transfer"}),
        credentials=store.credentials,
        transfer=store.transfer,
    )


_ENSURE = """
import json, sys
from pathlib import Path
from prefect_aws import AwsCredentials
from gpuflow.storage.model_cache import ModelCache
from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.core.request import ModelRef
store = S3ObjectStore(
    endpoint_url=sys.argv[1], region_name="us-east-1", addressing_style="path",
    credentials=AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="x"),
)
from concurrent.futures import ThreadPoolExecutor
def ensure(_: int) -> dict[str, object]:
    # flock locks belong to an open file: threads of one process exclude each other too.
    cached = ModelCache(root=Path(sys.argv[2])).ensure(
        ModelRef(name="tiny-i2v", revision="r1"), store, sys.argv[3]
    )
    return {"downloaded": cached.downloaded, "bytes": cached.bytes_downloaded}
with ThreadPoolExecutor(4) as pool:
    print(json.dumps(list(pool.map(ensure, range(4)))))
"""


def test_eight_concurrent_requests_from_two_processes_download_the_model_once(
    s3_store: S3ObjectStore, s3_proxy: CountingProxy, bucket: str, tmp_path: Path
) -> None:
    prefix = _publish_model(s3_store, bucket, tmp_path)
    cache_root = tmp_path / "nas" / "models"
    s3_proxy.reset()

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _ENSURE, s3_proxy.url, str(cache_root), prefix],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)  # 2 processes x 4 threads: 8 requests (imports cost 2 cores dear)
    ]
    results = [
        result
        for process in processes
        for result in json.loads(process.communicate(timeout=120)[0])
    ]

    model_bytes = sum(MODEL_FILES.values())
    assert sorted(result["downloaded"] for result in results) == [False] * 7 + [True]
    assert sum(result["bytes"] for result in results) == model_bytes
    # Bytes the server sent: the model once, plus listings and headers.
    assert model_bytes <= s3_proxy.bytes_down <= model_bytes + 256 * 1024
    cache = ModelCache(root=cache_root)
    manifest = json.loads((cache.model_dir(MODEL) / MANIFEST).read_text())
    assert manifest["source"] == prefix
    assert {entry["path"]: entry["size"] for entry in manifest["files"]} == MODEL_FILES
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"])


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_damaged_cached_file_is_refetched_alone(
    s3_store: S3ObjectStore,
    s3_proxy: CountingProxy,
    bucket: str,
    tmp_path: Path,
    damage: str,
) -> None:
    prefix = _publish_model(s3_store, bucket, tmp_path)
    cache = ModelCache(root=tmp_path / "models")
    cache.ensure(MODEL, s3_store, prefix)
    damaged = cache.model_dir(MODEL) / "weights/part-1.bin"
    good = sha256_of(damaged)
    if damage == "truncate":
        os.truncate(damaged, 1000)
    elif damage == "corrupt":
        with damaged.open("r+b") as handle:  # same size, one byte flipped
            handle.seek(4096)
            byte = handle.read(1)
            handle.seek(4096)
            handle.write(bytes([byte[0] ^ 0xFF]))
    else:
        damaged.unlink()
    assert not cache.is_ready(MODEL)

    s3_proxy.reset()
    repaired = cache.ensure(MODEL, _fresh(s3_store), prefix)

    assert repaired.downloaded and repaired.bytes_downloaded == MODEL_FILES["weights/part-1.bin"]
    assert sha256_of(damaged) == good
    assert s3_proxy.bytes_down <= MODEL_FILES["weights/part-1.bin"] + 64 * 1024
    assert cache.is_ready(MODEL)
    again = cache.ensure(MODEL, s3_store, prefix)
    assert not again.downloaded


def test_a_lock_left_by_a_killed_process_does_not_block(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    prefix = _publish_model(s3_store, bucket, tmp_path)
    cache = ModelCache(root=tmp_path / "models", lock_timeout_s=120)
    lock = cache.root / MODEL.name / f".{MODEL.revision}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from gpuflow.core.locks import exclusive_lock\n"
            "with exclusive_lock(Path(sys.argv[1]), 5):\n"
            "    print('locked', flush=True); time.sleep(600)",
            str(lock),
        ],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    started = time.monotonic()
    cached = cache.ensure(MODEL, s3_store, prefix)
    # The bound is the behaviour: the dead holder's lock is not waited out (the cache would
    # wait up to its lock timeout, 120 s); 60 s leaves a loaded machine room.
    assert cached.downloaded and time.monotonic() - started < 60


def test_lru_eviction_skips_a_model_in_use(tmp_path: Path, web_root: Path) -> None:
    server = RangeFileServer(web_root)
    try:
        store = HttpSource()
        cache = ModelCache(root=tmp_path / "models")
        models = [ModelRef(name="m", revision=f"v{index}") for index in range(3)]
        for model in models:
            source = web_root / model.name / model.revision
            random_file(source / "w.bin", 1000)
            _write_index(source)
            cache.ensure(model, store, f"{server.url}/{model.name}/{model.revision}")
            time.sleep(0.01)  # distinct last-use times
        old, held, newest = models
        with cache.hold(held):
            assert cache.evict_least_recently_used(max_bytes=2000) == [cache.model_dir(old)]
            assert cache.evict_least_recently_used(max_bytes=0) == [cache.model_dir(newest)]
        assert cache.is_ready(held), "a model in use is never evicted"
        assert not cache.model_dir(old).exists() and not cache.model_dir(newest).exists()
    finally:
        server.stop()


def _write_index(directory: Path) -> None:
    files = [
        {"path": path.relative_to(directory).as_posix(), "size": path.stat().st_size,
         "sha256": sha256_of(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    ]  # fmt: skip
    (directory / MANIFEST).write_text(json.dumps({"files": files}))


def test_model_from_an_https_source_with_ranges_and_verified_checksums(
    tmp_path: Path, web_root: Path, web_server: RangeFileServer
) -> None:
    source = web_root / "hub" / MODEL.name / MODEL.revision
    for relative, size in {**MODEL_FILES, "weights/big.bin": 20 * MiB}.items():
        random_file(source / relative, size)
    _write_index(source)
    prefix = f"{web_server.url}/hub/{MODEL.name}/{MODEL.revision}"
    cache = ModelCache(root=tmp_path / "models")

    cached = cache.ensure(MODEL, HttpSource(), prefix)

    assert sha256_of(cached.path / "weights/big.bin") == sha256_of(source / "weights/big.bin")
    ranged = [rng for method, path, rng in web_server.requests if path.endswith("big.bin") and rng]
    assert len(ranged) > 1, "the large file came in parallel ranges"

    # A file whose bytes differ from the index's checksum is refused, not cached.
    (source / "config.json").write_bytes(b"tampered" * 10)
    index = json.loads((source / MANIFEST).read_text())
    index["files"][0]["size"] = 80
    (source / MANIFEST).write_text(json.dumps(index))
    other = ModelRef(name=MODEL.name, revision="r2")
    with pytest.raises(IntegrityError, match=r"config\.json.*sha256"):
        cache.ensure(other, HttpSource(), prefix)
    assert not cache.is_ready(other)


# Eight 5 MiB parts, two at a time: a fill can be caught with some parts done, some not.
_RESUMABLE_PARTS = TransferSettings(
    max_concurrency=2, single_stream_below=5 * MiB, min_part_size=5 * MiB, max_part_size=5 * MiB
)
_BIG = 40 * MiB

_KILLABLE_FILL = """
import sys
from pathlib import Path
from prefect_aws import AwsCredentials
from gpuflow.core.request import ModelRef
from gpuflow.storage.https import HttpSource
from gpuflow.storage.model_cache import ModelCache
from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.storage.transfer import MiB, TransferSettings
kind, endpoint, cache_root, prefix = sys.argv[1:]
transfer = TransferSettings(max_concurrency=2, single_stream_below=5 * MiB,
                            min_part_size=5 * MiB, max_part_size=5 * MiB)
store = HttpSource(transfer=transfer) if kind == "https" else S3ObjectStore(
    endpoint_url=endpoint, region_name="us-east-1", addressing_style="path",
    credentials=AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="x"),
    transfer=transfer,
)
ModelCache(root=Path(cache_root)).ensure(ModelRef(name="tiny-i2v", revision="r1"), store, prefix)
"""


@pytest.mark.parametrize("kind", ["s3", "https"])
def test_a_resumed_fill_counts_only_the_bytes_it_fetched(
    kind: str,
    s3_store: S3ObjectStore,
    bucket: str,
    tmp_path: Path,
    web_root: Path,
    web_server: RangeFileServer,
    moto_server: MotoServer,
) -> None:
    files = {"config.json": 300, "weights/big.bin": _BIG}
    source = tmp_path / "source-model" if kind == "s3" else web_root / "hub"
    for relative, size in files.items():
        random_file(source / relative, size)
    if kind == "s3":
        prefix_path = f"{bucket}/models/{MODEL.name}/{MODEL.revision}"
        s3_store.upload_prefix(source, f"s3://{prefix_path}")
        upstream_port = moto_server.port
    else:
        _write_index(source)
        upstream_port = web_server.port
    # A proxy of its own: it stalls the first fill midway and counts what the second fetches.
    proxy = CountingProxy(upstream_port)
    prefix = f"s3://{prefix_path}" if kind == "s3" else f"{proxy.url}/hub"
    cache_root = tmp_path / "nas" / "models"
    journal = journal_path(
        cache_root / MODEL.name / f".{MODEL.revision}.partial" / "weights/big.bin"
    )
    try:
        proxy.stall_after(7 * 5 * MiB)  # at most 7 of the 8 parts pass before the kill
        first = subprocess.Popen(
            [sys.executable, "-c", _KILLABLE_FILL, kind, proxy.url, str(cache_root), prefix],
            cwd=REPOSITORY,
        )
        try:
            deadline = time.monotonic() + 60
            while not (journal.is_file() and len(journal.read_text().splitlines()) >= 4):
                assert first.poll() is None, "the fill ended before it could be killed"
                assert time.monotonic() < deadline, "no part finished in time"
                time.sleep(0.02)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
            proxy.release()
        finished_parts = len(journal.read_text().splitlines()) - 1
        assert 3 <= finished_parts < 8

        proxy.reset()
        if kind == "s3":
            store: S3ObjectStore | HttpSource = S3ObjectStore(
                **s3_store.model_dump(exclude={"credentials", "transfer", "endpoint_url"}),
                endpoint_url=proxy.url,
                credentials=s3_store.credentials,
                transfer=_RESUMABLE_PARTS,
            )
        else:
            store = HttpSource(transfer=_RESUMABLE_PARTS)
        cached = ModelCache(root=cache_root).ensure(MODEL, store, prefix)
        fetched_body_bytes = proxy.bytes_down
    finally:
        proxy.close()

    unfinished = (8 - finished_parts) * 5 * MiB
    assert cached.downloaded
    assert cached.bytes_downloaded == unfinished, "only the parts the kill left out count"
    # What the server sent: those parts, plus listings and headers, not the whole model.
    assert unfinished <= fetched_body_bytes <= unfinished + 64 * 1024
    assert sha256_of(cached.path / "weights/big.bin") == sha256_of(source / "weights/big.bin")
