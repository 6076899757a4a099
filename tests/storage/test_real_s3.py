"""The same transfers against a real S3 (or S3-compatible) bucket, when one is configured.

Set GPUFLOW_TEST_S3_URI=s3://bucket/some/prefix (and optionally GPUFLOW_TEST_S3_ENDPOINT,
GPUFLOW_TEST_S3_SCHEME for OSS/TOS/COS/KS3) with credentials in the usual AWS
environment variables. Everything written goes under that prefix and is deleted.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from fastcrc import crc64

from gpuflow.storage.s3 import PROVIDER_CRC64_HEADERS, S3ObjectStore
from gpuflow.storage.transfer import MiB
from tests.support.files import random_file, sha256_of

PREFIX = os.environ.get("GPUFLOW_TEST_S3_URI")

pytestmark = pytest.mark.skipif(
    not PREFIX,
    reason="no real bucket: set GPUFLOW_TEST_S3_URI=s3://bucket/prefix and AWS credentials",
)


def _real_store() -> S3ObjectStore:
    fields: dict[str, Any] = {"scheme": os.environ.get("GPUFLOW_TEST_S3_SCHEME", "s3")}
    if endpoint := os.environ.get("GPUFLOW_TEST_S3_ENDPOINT"):
        fields["endpoint_url"] = endpoint
    return S3ObjectStore(**fields)


def _test_uri() -> str:
    assert PREFIX is not None
    return f"{PREFIX.rstrip('/')}/gpuflow-test-{uuid.uuid4().hex[:8]}/blob"


def test_round_trip_against_a_real_bucket(tmp_path: Path) -> None:
    store = _real_store()
    source = random_file(tmp_path / "blob", 40 * MiB + 5)
    uri = _test_uri()
    try:
        store.upload(source, uri)
        assert store.stat(uri).size == source.stat().st_size
        store.download(uri, tmp_path / "copy")
        assert sha256_of(tmp_path / "copy") == sha256_of(source)
    finally:
        parsed = store.check_uri(uri)
        store.client.delete_object(Bucket=parsed.bucket, Key=parsed.key)


def test_another_clients_object_is_checked_by_what_the_real_store_keeps(tmp_path: Path) -> None:
    # boto3's own multipart upload (no CRC recorded by gpuflow). OSS and COS document the
    # CRC-64/ECMA-182 header the download is then checked by; it must be the source's.
    store = _real_store()
    source = random_file(tmp_path / "blob", 20 * MiB + 3)
    uri = _test_uri()
    parsed = store.check_uri(uri)
    try:
        store.client.upload_file(
            str(source),
            parsed.bucket,
            parsed.key,
            Config=TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB),
        )
        head = store.client.head_object(Bucket=parsed.bucket, Key=parsed.key)
        headers = head["ResponseMetadata"]["HTTPHeaders"]
        kept = [headers[name] for name in PROVIDER_CRC64_HEADERS if name in headers]
        if store.scheme in ("oss", "cos"):
            assert kept, f"{store.scheme} documents one of {PROVIDER_CRC64_HEADERS}"
        for value in kept:
            assert int(value) == crc64.xz(source.read_bytes())
        store.download(uri, tmp_path / "copy")
        assert sha256_of(tmp_path / "copy") == sha256_of(source)
    finally:
        store.client.delete_object(Bucket=parsed.bucket, Key=parsed.key)
