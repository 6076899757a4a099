"""Storage fixtures: moto's S3 server behind a byte-counting proxy, and a Range file server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_aws import AwsCredentials

from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.storage.transfer import MiB, TransferSettings
from tests.support.s3_servers import CountingProxy, MotoServer, RangeFileServer

# A secret that must never show up in a log line, an error or a saved document.
SECRET = "sEcReT-never-log-7f3a9c"

# Small parts so that multipart paths run on objects of a few MiB.
SMALL_PARTS = TransferSettings(
    max_concurrency=4, single_stream_below=5 * MiB, min_part_size=5 * MiB
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_proxy(moto_server: MotoServer) -> Iterator[CountingProxy]:
    proxy = CountingProxy(moto_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def s3_store(s3_proxy: CountingProxy) -> S3ObjectStore:
    s3_proxy.reset()
    s3_proxy.release()
    return S3ObjectStore(
        endpoint_url=s3_proxy.url,
        region_name="us-east-1",
        addressing_style="path",
        credentials=AwsCredentials(aws_access_key_id="testing", aws_secret_access_key=SECRET),
        transfer=SMALL_PARTS,
    )


@pytest.fixture
def bucket(s3_store: S3ObjectStore) -> str:
    name = f"bucket-{uuid.uuid4().hex[:12]}"
    s3_store.client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def web_server(web_root: Path) -> Iterator[RangeFileServer]:
    server = RangeFileServer(web_root)
    yield server
    server.stop()
