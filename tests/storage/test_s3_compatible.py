"""S3ObjectStore on stores whose ETags are not S3's MD5s: s3rver 3.7.1 (a second, independent
S3 implementation with plain-MD5 multipart ETags, no If-Match, no partNumber, no additional
checksums) and moto behind a proxy that answers with SSE-KMS-style opaque ETags."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from awscrt.checksums import crc64nvme
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from prefect_aws import AwsCredentials

from devtools.s3rver import S3RVER_KEY
from gpuflow.core.errors import IntegrityError, ObjectNotFoundError
from gpuflow.storage.s3 import CRC64NVME_METADATA, S3ObjectStore
from gpuflow.storage.transfer import MiB, plan_parts
from tests.storage.conftest import SMALL_PARTS
from tests.support.files import random_file, sha256_of
from tests.support.s3_servers import (
    CountingProxy,
    MotoServer,
    OpaqueEtagProxy,
    S3rverServer,
)

pytestmark = pytest.mark.integration

SIZES = [1000, 12 * MiB + 7]  # one PUT, and a multipart upload of three parts


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3rverServer]:
    server = S3rverServer(tmp_path_factory.mktemp("s3rver"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3rver_proxy(s3rver: S3rverServer) -> Iterator[CountingProxy]:
    proxy = CountingProxy(s3rver.port)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def kms_proxy(moto_server: MotoServer) -> Iterator[OpaqueEtagProxy]:
    proxy = OpaqueEtagProxy(moto_server.port)
    yield proxy
    proxy.stop()


def _store(url: str, key: str) -> S3ObjectStore:
    return S3ObjectStore(
        endpoint_url=url,
        region_name="us-east-1",
        addressing_style="path",
        credentials=AwsCredentials(aws_access_key_id=key, aws_secret_access_key=key),
        transfer=SMALL_PARTS,
    )


@pytest.fixture
def s3rver_store(s3rver_proxy: CountingProxy) -> S3ObjectStore:
    s3rver_proxy.reset()
    s3rver_proxy.release()
    return _store(s3rver_proxy.url, S3RVER_KEY)


@pytest.fixture
def kms_store(kms_proxy: OpaqueEtagProxy) -> S3ObjectStore:
    return _store(kms_proxy.url, "testing")


@pytest.fixture(params=["s3rver", "kms"])
def odd_store(request: pytest.FixtureRequest) -> S3ObjectStore:
    store: S3ObjectStore = request.getfixturevalue(f"{request.param}_store")
    return store


def _new_bucket(store: S3ObjectStore) -> str:
    name = f"bucket-{uuid.uuid4().hex[:12]}"
    store.client.create_bucket(Bucket=name)
    return name


def _upload_by_another_client(
    store: S3ObjectStore,
    source: Path,
    bucket: str,
    key: str,
    metadata: dict[str, str] | None = None,
) -> None:
    """boto3's own upload, in 6 MiB parts (gpuflow's own would record a CRC-64/NVME)."""
    store.client.upload_file(
        str(source),
        bucket,
        key,
        ExtraArgs={"Metadata": metadata} if metadata else None,
        Config=TransferConfig(multipart_threshold=6 * MiB, multipart_chunksize=6 * MiB),
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size}B")
def test_upload_whose_etag_is_no_s3_md5_is_kept_and_downloads_intact(
    odd_store: S3ObjectStore, tmp_path: Path, size: int
) -> None:
    bucket = _new_bucket(odd_store)
    source = random_file(tmp_path / "video.mp4", size)
    uri = f"s3://{bucket}/out/video.mp4"

    uploaded = odd_store.upload(source, uri)

    # The object the store holds is the one uploaded, under the ETag the store gave it.
    assert odd_store.stat(uri).etag == uploaded.etag
    odd_store.download(uri, tmp_path / "copy.mp4")
    assert sha256_of(tmp_path / "copy.mp4") == sha256_of(source)


def test_s3rver_gives_multipart_objects_a_plain_md5_etag(
    s3rver_store: S3ObjectStore, tmp_path: Path
) -> None:
    # What the store does, so that the test above covers the plain-MD5 case.
    bucket = _new_bucket(s3rver_store)
    source = random_file(tmp_path / "blob", 12 * MiB)
    uploaded = s3rver_store.upload(source, f"s3://{bucket}/blob")
    assert uploaded.etag is not None and "-" not in uploaded.etag


def test_download_of_an_object_another_client_uploaded_in_parts(
    odd_store: S3ObjectStore, tmp_path: Path
) -> None:
    bucket = _new_bucket(odd_store)
    source = random_file(tmp_path / "weights", 17 * MiB + 3)
    _upload_by_another_client(odd_store, source, bucket, "weights")

    odd_store.download(f"s3://{bucket}/weights", tmp_path / "copy")

    assert sha256_of(tmp_path / "copy") == sha256_of(source)


@pytest.mark.parametrize("server", ["moto", "s3rver"])
def test_object_replaced_during_a_ranged_download_is_detected(
    server: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    # moto honours If-Match (PreconditionFailed); s3rver ignores it and sends the new
    # version, whose ETag in the answer gives the change away.
    proxy: CountingProxy = request.getfixturevalue(
        f"{'s3' if server == 'moto' else 's3rver'}_proxy"
    )
    backend_port = request.getfixturevalue("moto_server" if server == "moto" else "s3rver").port
    key = S3RVER_KEY if server == "s3rver" else "testing"
    store = _store(proxy.url, key)
    proxy.reset()
    proxy.release()
    bucket = _new_bucket(store)
    uri = f"s3://{bucket}/big"
    store.upload(random_file(tmp_path / "v1", 40 * MiB), uri)
    direct = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{backend_port}",
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=key,
        config=Config(s3={"addressing_style": "path"}),
    )
    destination = tmp_path / "dl" / "big"
    failures: list[BaseException] = []

    # A new store: its connections open after the reset below, so the proxy counts them.
    downloader = _store(proxy.url, key)

    def download() -> None:
        try:
            downloader.download(uri, destination)
        except BaseException as error:
            failures.append(error)

    # The first parts' answers (old version) pass until the object is replaced.
    proxy.reset()
    proxy.stall_after(5 * MiB)
    worker = threading.Thread(target=download)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while proxy.bytes_down <= 5 * MiB:
            assert worker.is_alive(), f"the download ended before the object changed: {failures}"
            assert time.monotonic() < deadline, "the download sent nothing in time"
            time.sleep(0.02)
        direct.put_object(Bucket=bucket, Key="big", Body=(tmp_path / "v1").read_bytes()[::-1])
    finally:
        proxy.release()
        worker.join(timeout=120)

    assert len(failures) == 1 and isinstance(failures[0], IntegrityError), failures
    assert "changed during the transfer" in str(failures[0])
    assert not destination.exists()


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size}B")
def test_upload_the_store_keeps_wrong_is_shown_wrong_and_deleted(
    kms_store: S3ObjectStore, kms_proxy: OpaqueEtagProxy, tmp_path: Path, size: int
) -> None:
    bucket = _new_bucket(kms_store)
    source = random_file(tmp_path / "video.mp4", size)
    uri = f"s3://{bucket}/out/video.mp4"

    kms_proxy.corrupt_writes = True
    try:
        # Shown wrong by the checksum the store computed of what it kept (moto does for a
        # PUT naming its algorithm) or, where the store returns none, by reading it back.
        with pytest.raises(IntegrityError, match=r"read back has MD5|SHA-256 checksum .* is not"):
            kms_store.upload(source, uri)
    finally:
        kms_proxy.corrupt_writes = False

    with pytest.raises(ObjectNotFoundError):
        kms_store.stat(uri)


def test_download_with_an_opaque_etag_is_checked_against_the_stored_checksum(
    kms_store: S3ObjectStore, kms_proxy: OpaqueEtagProxy, tmp_path: Path
) -> None:
    # The ETag of an SSE-KMS object says nothing of its bytes; the SHA-256 checksum the
    # object was uploaded with (ChecksumMode=ENABLED) still does.
    bucket = _new_bucket(kms_store)
    uri = f"s3://{bucket}/cat.png"
    kms_store.upload(random_file(tmp_path / "cat.png", 1000), uri)

    kms_proxy.corrupt_reads = True
    try:
        with pytest.raises(IntegrityError, match="SHA-256 checksum"):
            kms_store.download(uri, tmp_path / "copy.png")
    finally:
        kms_proxy.corrupt_reads = False
    assert not (tmp_path / "copy.png").exists()


@pytest.mark.parametrize("md5_etags", [False, True])
def test_a_store_computing_etags_its_own_way_is_declared_so(
    moto_server: MotoServer, tmp_path: Path, md5_etags: bool
) -> None:
    # Opaque ETags with no encryption header: only the store's settings say whether a
    # mismatch means wrong bytes (md5_etags) or an ETag that is no MD5 (OSS, COS).
    proxy = OpaqueEtagProxy(moto_server.port, announce_kms=False)
    try:
        store = _store(proxy.url, "testing").model_copy(update={"md5_etags": md5_etags})
        bucket = _new_bucket(store)
        source = random_file(tmp_path / "weights", 12 * MiB + 7)
        uri = f"s3://{bucket}/weights"
        # By another client: gpuflow's own uploads record a CRC-64/NVME, which would
        # decide instead of the ETag.
        _upload_by_another_client(store, source, bucket, "weights")

        if md5_etags:
            with pytest.raises(IntegrityError, match=r"ETag \S+ expected"):
                store.download(uri, tmp_path / "copy")
        else:
            store.download(uri, tmp_path / "copy")
            assert sha256_of(tmp_path / "copy") == sha256_of(source)
    finally:
        proxy.stop()


def test_provider_stores_do_not_take_etags_for_md5s() -> None:
    assert not S3ObjectStore.for_provider("oss", "cn-hangzhou").md5_etags
    assert S3ObjectStore.for_provider("oss", "cn-hangzhou", md5_etags=True).md5_etags
    assert S3ObjectStore().md5_etags


@pytest.mark.parametrize("server", ["moto", "s3rver"])
def test_an_upload_an_md5_etag_verifies_is_not_read_back(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # S3's MD5 of part MD5s (moto) and s3rver's plain MD5 both verify the bytes: reading
    # 12 MiB back would double the traffic for nothing.
    proxy: CountingProxy = request.getfixturevalue(
        "s3_proxy" if server == "moto" else "s3rver_proxy"
    )
    key = S3RVER_KEY if server == "s3rver" else "testing"
    bucket = _new_bucket(_store(proxy.url, key))
    proxy.reset()
    proxy.release()
    store = _store(proxy.url, key)  # connections opened after the reset are counted

    store.upload(random_file(tmp_path / "video.mp4", 12 * MiB + 7), f"s3://{bucket}/video.mp4")

    assert proxy.bytes_down < 256 * 1024, "only answers came back, not the object"


def _part_headers(store: S3ObjectStore) -> list[dict[str, str]]:
    """The headers of every UploadPart request the store's client sends (as signed)."""
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(
            {
                name.lower(): value.decode() if isinstance(value, bytes) else str(value)
                for name, value in request.headers.items()
            }
        )

    store.client.meta.events.register("before-send.s3.UploadPart", record)
    return sent


@pytest.mark.parametrize("server", ["moto", "s3rver"])
def test_parts_carry_the_checksums_the_store_checks_and_an_unsigned_payload(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # moto names SHA-256 back on CreateMultipartUpload (it keeps checksums); s3rver does
    # not, so its parts carry only the Content-MD5 it checks. Either way the body is
    # bound to the signature by those signed headers, not by one more SHA-256 of it.
    proxy: CountingProxy = request.getfixturevalue(
        f"{'s3' if server == 'moto' else 's3rver'}_proxy"
    )
    store = _store(proxy.url, S3RVER_KEY if server == "s3rver" else "testing")
    bucket = _new_bucket(store)
    sent = _part_headers(store)
    source = random_file(tmp_path / "video.mp4", 12 * MiB + 7)

    store.upload(source, f"s3://{bucket}/video.mp4")

    assert len(sent) == 3
    assert all(headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" for headers in sent)
    assert all("content-md5" in headers for headers in sent)
    assert all(("x-amz-checksum-sha256" in headers) == (server == "moto") for headers in sent)
    for headers in sent:
        signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert "content-md5" in signed
    store.download(f"s3://{bucket}/video.mp4", tmp_path / "copy")
    assert sha256_of(tmp_path / "copy") == sha256_of(source)


def test_signed_payloads_are_the_bodies_sha256_where_asked_for(
    s3rver_proxy: CountingProxy, tmp_path: Path
) -> None:
    store = _store(s3rver_proxy.url, S3RVER_KEY).model_copy(update={"sign_payloads": True})
    bucket = _new_bucket(store)
    sent = _part_headers(store)
    data = random_file(tmp_path / "video.mp4", 12 * MiB + 7).read_bytes()

    store.upload(tmp_path / "video.mp4", f"s3://{bucket}/video.mp4")

    parts = plan_parts(len(data), SMALL_PARTS)
    expected = {hashlib.sha256(data[p.offset : p.offset + p.length]).hexdigest() for p in parts}
    assert {headers["x-amz-content-sha256"] for headers in sent} == expected


def test_a_part_stored_wrong_on_a_store_without_checksums_is_shown_wrong_and_deleted(
    s3rver: S3rverServer, tmp_path: Path
) -> None:
    # No checksum kept (s3rver), ETags of the store's own making (the proxy): the object
    # is read back and compared with the MD5 of the file.
    proxy = OpaqueEtagProxy(s3rver.port, announce_kms=False)
    try:
        store = _store(proxy.url, S3RVER_KEY)
        bucket = _new_bucket(store)
        uri = f"s3://{bucket}/weights"
        proxy.corrupt_writes = True
        with pytest.raises(IntegrityError, match="read back has MD5"):
            store.upload(random_file(tmp_path / "weights", 12 * MiB + 7), uri)
        proxy.corrupt_writes = False
        with pytest.raises(ObjectNotFoundError):
            store.stat(uri)
    finally:
        proxy.stop()


@pytest.mark.parametrize("corrupt_writes", [False, True], ids=["kept", "kept-wrong"])
def test_parts_whose_etags_are_their_md5s_verify_an_upload_the_store_tags_its_own_way(
    s3rver_proxy: CountingProxy, tmp_path: Path, corrupt_writes: bool
) -> None:
    # OSS and COS: the object's ETag is of the store's making, each part's is its MD5. The
    # parts' ETags vouch for what the store keeps, as S3's MD5 of the part MD5s would: no
    # read-back. A part kept wrong gives itself away by its ETag, and is then read back,
    # shown wrong and deleted.
    proxy = OpaqueEtagProxy(s3rver_proxy.port, announce_kms=False, opaque_part_etags=False)
    try:
        store = _store(proxy.url, S3RVER_KEY)
        bucket = _new_bucket(store)
        uri = f"s3://{bucket}/weights"
        source = random_file(tmp_path / "weights", 12 * MiB + 7)
        _upload_kept_or_refused(
            store, uri, source, s3rver_proxy, proxy, corrupt_writes, refused="read back has MD5"
        )
        if corrupt_writes:
            assert s3rver_proxy.bytes_down > 12 * MiB, "the refusal came from a read-back"
    finally:
        proxy.stop()


def _upload_kept_or_refused(
    store: S3ObjectStore,
    uri: str,
    source: Path,
    counted: CountingProxy,
    writer: OpaqueEtagProxy,
    corrupt_writes: bool,
    refused: str,
) -> None:
    """Upload ``source`` with ``writer`` keeping the bytes or (``corrupt_writes``) not: kept,
    only answers come back through ``counted`` and the object downloads intact; kept
    wrong, the upload fails matching ``refused`` and nothing is left."""
    counted.reset()
    writer.corrupt_writes = corrupt_writes
    if corrupt_writes:
        with pytest.raises(IntegrityError, match=refused):
            store.upload(source, uri)
        writer.corrupt_writes = False
        with pytest.raises(ObjectNotFoundError):
            store.stat(uri)
    else:
        store.upload(source, uri)
        assert counted.bytes_down < 256 * 1024, "only answers came back"
        store.download(uri, source.with_name("copy"))
        assert sha256_of(source.with_name("copy")) == sha256_of(source)


def test_an_s3_form_etag_unlike_the_parts_is_settled_by_the_bytes_not_the_part_etags(
    s3_proxy: CountingProxy, tmp_path: Path
) -> None:
    # A store whose ETags are S3's MD5s answers another MD5 of part MD5s than the parts'
    # ETags give: it joined something else than the parts listed. The parts' own ETags do
    # not settle that; reading the object back does (here it holds the file's bytes).
    proxy = OpaqueEtagProxy(s3_proxy.port, announce_kms=False, opaque_part_etags=False)
    try:
        store = _store(proxy.url, "testing").model_copy(update={"part_checksum": "none"})
        bucket = _new_bucket(store)
        s3_proxy.reset()
        s3_proxy.release()

        uploaded = store.upload(random_file(tmp_path / "v", 12 * MiB + 7), f"s3://{bucket}/v")

        assert uploaded.etag is not None and uploaded.etag.endswith("-3")
        assert s3_proxy.bytes_down > 12 * MiB, "the object was read back"
    finally:
        proxy.stop()


@pytest.fixture
def oss_proxy(s3rver_proxy: CountingProxy) -> Iterator[OpaqueEtagProxy]:
    """OSS as its API reference describes it: object ETags of its own making, part ETags
    that are part MD5s, and every object's CRC-64/ECMA-182 in x-oss-hash-crc64ecma."""
    proxy = OpaqueEtagProxy(
        s3rver_proxy.port,
        announce_kms=False,
        opaque_part_etags=False,
        crc64ecma_header="x-oss-hash-crc64ecma",
    )
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size}B")
def test_another_clients_object_on_oss_is_checked_by_the_stores_crc64_ecma(
    oss_proxy: OpaqueEtagProxy, tmp_path: Path, size: int
) -> None:
    # Its ETag says nothing (md5_etags false, as for_provider("oss") sets) and it carries no
    # CRC recorded by gpuflow: the store's own CRC of what it keeps checks the bytes.
    store = _store(oss_proxy.url, S3RVER_KEY).model_copy(update={"md5_etags": False})
    bucket = _new_bucket(store)
    source = random_file(tmp_path / "weights", size)
    _upload_by_another_client(store, source, bucket, "weights")
    uri = f"s3://{bucket}/weights"

    store.download(uri, tmp_path / "copy")
    assert sha256_of(tmp_path / "copy") == sha256_of(source)

    oss_proxy.corrupt_reads = True
    with pytest.raises(
        IntegrityError, match=r"CRC-64/ECMA-182 \d+ \(x-oss-hash-crc64ecma\) expected"
    ):
        store.download(uri, tmp_path / "flipped")
    assert not (tmp_path / "flipped").exists()


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size}B")
@pytest.mark.parametrize("corrupt_writes", [False, True], ids=["kept", "kept-wrong"])
def test_an_upload_to_oss_is_verified_by_the_stores_crc64_ecma_of_what_it_kept(
    s3rver_proxy: CountingProxy, tmp_path: Path, size: int, corrupt_writes: bool
) -> None:
    # Every ETag of the store's own making, part ETags too (SSE-KMS on OSS): only a
    # read-back would check the bytes, but the CRC the store answers with checks them on
    # receipt. A part kept wrong is refused (sent again, then given up), nothing is left.
    proxy = OpaqueEtagProxy(
        s3rver_proxy.port, announce_kms=False, crc64ecma_header="x-oss-hash-crc64ecma"
    )
    try:
        store = _store(proxy.url, S3RVER_KEY).model_copy(update={"md5_etags": False})
        bucket = _new_bucket(store)
        uri = f"s3://{bucket}/weights"
        source = random_file(tmp_path / "weights", size)
        refused = (
            r"the store's CRC-64/ECMA-182 \d+ \(x-oss-hash-crc64ecma\) of (part \d+|the object)"
        )
        _upload_kept_or_refused(
            store, uri, source, s3rver_proxy, proxy, corrupt_writes, refused=refused
        )
    finally:
        proxy.stop()


def test_an_upload_the_store_gives_no_crc_for_every_part_is_read_back_not_taken_on_trust(
    s3rver_proxy: CountingProxy, tmp_path: Path
) -> None:
    # COS: Complete gives the object's CRC only if every part has one. Without it, and with
    # ETags of the store's own making, the bytes are read back; the parts that have a CRC
    # were still checked on receipt.
    proxy = OpaqueEtagProxy(
        s3rver_proxy.port, announce_kms=False, crc64ecma_header="x-cos-hash-crc64ecma"
    )
    try:
        store = _store(proxy.url, S3RVER_KEY).model_copy(update={"md5_etags": False})
        bucket = _new_bucket(store)
        source = random_file(tmp_path / "weights", 12 * MiB + 7)
        proxy.parts_without_crc = {2}
        s3rver_proxy.reset()

        store.upload(source, f"s3://{bucket}/weights")

        assert s3rver_proxy.bytes_down > 12 * MiB, "the object was read back"
        store.download(f"s3://{bucket}/weights", tmp_path / "copy")
        assert sha256_of(tmp_path / "copy") == sha256_of(source)
    finally:
        proxy.stop()


def _crc64nvme_of(path: Path) -> str:
    return base64.b64encode(crc64nvme(path.read_bytes()).to_bytes(8, "big")).decode()


@pytest.fixture(params=["moto", "s3rver"])
def any_store(request: pytest.FixtureRequest) -> S3ObjectStore:
    if request.param == "moto":
        return _store(request.getfixturevalue("moto_server").url, "testing")
    store: S3ObjectStore = request.getfixturevalue("s3rver_store")
    return store


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size}B")
def test_an_upload_records_the_sources_crc64nvme_in_the_objects_metadata(
    any_store: S3ObjectStore, tmp_path: Path, size: int
) -> None:
    bucket = _new_bucket(any_store)
    source = random_file(tmp_path / "video.mp4", size)

    any_store.upload(source, f"s3://{bucket}/video.mp4")

    head = any_store.client.head_object(Bucket=bucket, Key="video.mp4")
    assert head["Metadata"][CRC64NVME_METADATA] == _crc64nvme_of(source)


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size}B")
def test_a_download_whose_bytes_miss_the_recorded_crc64nvme_is_refused_and_not_kept(
    any_store: S3ObjectStore, tmp_path: Path, size: int
) -> None:
    # Another client's object, with the metadata of a different file: the store's ETag
    # (an MD5 of what it holds) agrees with the bytes; only the recorded CRC does not.
    bucket = _new_bucket(any_store)
    source = random_file(tmp_path / "weights", size)
    other = random_file(tmp_path / "other", size)
    _upload_by_another_client(
        any_store, source, bucket, "weights", {CRC64NVME_METADATA: _crc64nvme_of(other)}
    )
    destination = tmp_path / "copy" / "weights"

    recorded = re.escape(_crc64nvme_of(other))  # base64: "+" and "/" are regex characters
    with pytest.raises(IntegrityError, match=rf"CRC-64/NVME {recorded} recorded at upload"):
        any_store.download(f"s3://{bucket}/weights", destination)

    assert not destination.exists()
    assert list(destination.parent.iterdir()) == [], "partial file or journal left behind"


@pytest.mark.parametrize("recorded", ["not base64!", base64.b64encode(b"123").decode()])
def test_metadata_that_cannot_be_a_crc64nvme_leaves_the_check_to_the_etag(
    any_store: S3ObjectStore, tmp_path: Path, recorded: str
) -> None:
    bucket = _new_bucket(any_store)
    source = random_file(tmp_path / "weights", 12 * MiB + 7)
    _upload_by_another_client(any_store, source, bucket, "weights", {CRC64NVME_METADATA: recorded})

    any_store.download(f"s3://{bucket}/weights", tmp_path / "copy")

    assert sha256_of(tmp_path / "copy") == sha256_of(source)
