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

from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.storage.transfer import MiB
from tests.support.files import random_file, sha256_of

PREFIX = os.environ.get("GPUFLOW_TEST_S3_URI")

pytestmark = pytest.mark.skipif(
    not PREFIX,
    reason="no real bucket: set GPUFLOW_TEST_S3_URI=s3://bucket/prefix and AWS credentials",
)


def test_round_trip_against_a_real_bucket(tmp_path: Path) -> None:
    assert PREFIX is not None
    fields: dict[str, Any] = {"scheme": os.environ.get("GPUFLOW_TEST_S3_SCHEME", "s3")}
    if endpoint := os.environ.get("GPUFLOW_TEST_S3_ENDPOINT"):
        fields["endpoint_url"] = endpoint
    store = S3ObjectStore(**fields)
    source = random_file(tmp_path / "blob", 40 * MiB + 5)
    uri = f"{PREFIX.rstrip('/')}/gpuflow-test-{uuid.uuid4().hex[:8]}/blob"
    try:
        store.upload(source, uri)
        assert store.stat(uri).size == source.stat().st_size
        store.download(uri, tmp_path / "copy")
        assert sha256_of(tmp_path / "copy") == sha256_of(source)
    finally:
        parsed = store.check_uri(uri)
        store.client.delete_object(Bucket=parsed.bucket, Key=parsed.key)
