"""S3ObjectStore against moto's S3 server over HTTP (boto3 on the wire, no patching)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect_aws import AwsCredentials

from gpuflow.compute.local import LocalSubprocess
from gpuflow.core.errors import ObjectNotFoundError, StoreAccessError, UriError, WorkspacePathError
from gpuflow.core.request import VideoRequest
from gpuflow.core.workspace import Workspace
from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.ops.samples import landscape_png
from gpuflow.pipeline.generate_video import generate_video, stage_inputs
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.storage.local import LocalObjectStore
from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.storage.transfer import MiB, journal_path, partial_path
from gpuflow.storage.uri import ObjectUri
from tests.storage.conftest import SECRET, SMALL_PARTS
from tests.support.files import random_file, sha256_of
from tests.support.s3_servers import CountingProxy, MotoServer

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]


def test_single_file_round_trip_stat_and_list(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "cat.png", 1000)
    uri = f"s3://{bucket}/inputs/cat.png"

    uploaded = s3_store.upload(source, uri)
    downloaded = s3_store.download(uri, tmp_path / "out" / "cat.png")

    assert uploaded.size == downloaded.size == 1000
    assert (tmp_path / "out" / "cat.png").read_bytes() == source.read_bytes()
    assert s3_store.stat(uri).size == 1000
    assert [info.uri for info in s3_store.list(f"s3://{bucket}/inputs")] == [uri]
    assert not list((tmp_path / "out").glob(".*")), "no partial or journal left behind"


@pytest.mark.parametrize(
    "size",
    [0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 10 * MiB, 10 * MiB + 1],
    ids=lambda size: f"{size}B",
)
def test_multipart_boundaries_round_trip(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path, size: int
) -> None:
    source = random_file(tmp_path / "blob", size)
    uri = f"s3://{bucket}/blob-{size}"

    uploaded = s3_store.upload(source, uri)
    s3_store.download(uri, tmp_path / "copy")

    assert sha256_of(tmp_path / "copy") == sha256_of(source)
    # Above the single-stream size the object went up in parts, each checked on the way.
    assert ("-" in (uploaded.etag or "")) == (size > SMALL_PARTS.single_stream_below)


def test_download_of_an_object_another_client_uploaded_in_other_parts(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    # boto3's own multipart upload, 6 MiB parts: the download aligns to them to check the ETag.
    source = random_file(tmp_path / "weights", 17 * MiB + 3)
    s3_store.client.upload_file(
        str(source),
        bucket,
        "weights",
        Config=TransferConfig(multipart_threshold=6 * MiB, multipart_chunksize=6 * MiB),
    )
    info = s3_store.download(f"s3://{bucket}/weights", tmp_path / "copy")

    assert (info.etag or "").endswith("-3")
    assert sha256_of(tmp_path / "copy") == sha256_of(source)


def test_prefix_upload_and_download(s3_store: S3ObjectStore, bucket: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for relative, size in [("a.txt", 10), ("sub/b.bin", 6 * MiB), ("sub/deeper/c", 0)]:
        random_file(tree / relative, size)

    s3_store.upload_prefix(tree, f"s3://{bucket}/tree")
    s3_store.download_prefix(f"s3://{bucket}/tree", tmp_path / "copy")

    for relative in ["a.txt", "sub/b.bin", "sub/deeper/c"]:
        assert sha256_of(tmp_path / "copy" / relative) == sha256_of(tree / relative)


def test_missing_bucket_object_and_prefix_name_the_uri(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"s3://no-such-bucket-x/k: bucket"):
        s3_store.download("s3://no-such-bucket-x/k", tmp_path / "x")
    with pytest.raises(ObjectNotFoundError, match=rf"s3://{bucket}/missing\.png: no such object"):
        s3_store.download(f"s3://{bucket}/missing.png", tmp_path / "x")
    with pytest.raises(ObjectNotFoundError, match=rf"s3://{bucket}/empty: no objects"):
        list(s3_store.list(f"s3://{bucket}/empty"))
    with pytest.raises(ObjectNotFoundError, match=r"s3://no-such-bucket-x/p: bucket"):
        s3_store.upload(random_file(tmp_path / "f", 10), "s3://no-such-bucket-x/p")
    with pytest.raises(UriError, match="serves s3:// URIs"):
        s3_store.stat(f"oss://{bucket}/k")
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def auth_moto() -> object:
    # moto enforces IAM policies once the first N requests (the setup below) are done.
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "5"})
    admin = {
        "endpoint_url": server.url,
        "region_name": "us-east-1",
        "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key": "admin",
    }
    s3 = boto3.client("s3", **admin)
    iam = boto3.client("iam", **admin)
    s3.create_bucket(Bucket="locked")
    s3.put_object(Bucket="locked", Key="secret.bin", Body=b"x")
    iam.create_user(UserName="lister")
    iam.put_user_policy(
        UserName="lister",
        PolicyName="list-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="lister")["AccessKey"]
    yield server, key
    server.stop()


def test_denied_access_is_a_clear_error_without_the_secret(
    auth_moto: tuple[MotoServer, dict[str, str]], tmp_path: Path
) -> None:
    server, key = auth_moto
    lister = S3ObjectStore(
        endpoint_url=server.url,
        region_name="us-east-1",
        addressing_style="path",
        credentials=AwsCredentials(
            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
        ),
    )
    assert [info.uri for info in lister.list("s3://locked/")] == ["s3://locked/secret.bin"]
    with pytest.raises(StoreAccessError, match=r"s3://locked/secret\.bin: access denied") as err:
        lister.download("s3://locked/secret.bin", tmp_path / "x")
    assert key["SecretAccessKey"] not in str(err.value)
    with pytest.raises(StoreAccessError, match=r"s3://locked/new: access denied"):
        lister.upload(random_file(tmp_path / "f", 10), "s3://locked/new")

    wrong_secret = lister.model_copy(
        update={
            "credentials": AwsCredentials(
                aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=SECRET
            )
        }
    )
    with pytest.raises(StoreAccessError, match="SignatureDoesNotMatch") as err:
        list(wrong_secret.list("s3://locked/"))
    assert SECRET not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_traversal_keys_are_refused_before_anything_is_written(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    for key in ["model/ok.bin", "model/../../../evil", "model//etc/passwd"]:
        s3_store.client.put_object(Bucket=bucket, Key=key, Body=b"payload")
    destination = tmp_path / "deep" / "dest"

    with pytest.raises(UriError, match="outside the destination"):
        s3_store.download_prefix(f"s3://{bucket}/model", destination)

    assert not destination.exists()
    assert not (tmp_path / "evil").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


_KILLABLE_DOWNLOAD = """
import sys
from prefect_aws import AwsCredentials
from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.storage.transfer import MiB, TransferSettings
store = S3ObjectStore(
    endpoint_url=sys.argv[1], region_name="us-east-1", addressing_style="path",
    credentials=AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="x"),
    transfer=TransferSettings(max_concurrency=2, single_stream_below=5 * MiB,
                              min_part_size=5 * MiB, max_part_size=5 * MiB),
)
from pathlib import Path
store.download(sys.argv[2], Path(sys.argv[3]))
"""


def test_killed_download_resumes_fetching_only_unfinished_parts(
    s3_store: S3ObjectStore, s3_proxy: CountingProxy, bucket: str, tmp_path: Path
) -> None:
    size = 40 * MiB  # eight 5 MiB parts
    source = random_file(tmp_path / "big", size)
    uri = f"s3://{bucket}/big"
    s3_store.upload(source, uri)
    destination = tmp_path / "dl" / "big"
    journal = journal_path(destination)

    # At most 7 of the 8 parts' bytes pass until the kill, so the kill lands midway
    # however fast or slow the machine is.
    s3_proxy.reset()
    s3_proxy.stall_after(7 * 5 * MiB)
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_DOWNLOAD, s3_proxy.url, uri, str(destination)],
        cwd=REPOSITORY,
    )
    try:
        deadline = time.monotonic() + 60
        while not (journal.is_file() and len(journal.read_text().splitlines()) >= 4):
            assert process.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "no part finished in time"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        s3_proxy.release()
    finished_parts = len(journal.read_text().splitlines()) - 1
    assert 3 <= finished_parts < 8
    assert not destination.exists(), "a killed download must not publish"
    assert partial_path(destination).exists()

    s3_proxy.reset()
    # A new store, so its connections are counted from the reset on.
    resumed = S3ObjectStore(
        **s3_store.model_dump(exclude={"transfer", "credentials"}),
        credentials=s3_store.credentials,
        transfer=SMALL_PARTS.model_copy(update={"max_part_size": 5 * MiB}),
    )
    resumed.download(uri, destination)

    assert sha256_of(destination) == sha256_of(source)
    unfinished = (8 - finished_parts) * 5 * MiB
    assert unfinished <= s3_proxy.bytes_down <= unfinished + 64 * 1024  # + response headers
    assert not journal.exists() and not partial_path(destination).exists()


def test_no_secret_in_logs_errors_or_saved_form(
    s3_store: S3ObjectStore,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore and urllib3 at their most talkative
    source = random_file(tmp_path / "f", 7 * MiB)
    errors: list[str] = []
    s3_store.upload(source, f"s3://{bucket}/f")
    s3_store.download(f"s3://{bucket}/f", tmp_path / "g")
    for uri in [f"s3://{bucket}/missing", "s3://no-such-bucket-y/f"]:
        try:
            s3_store.download(uri, tmp_path / "h")
        except ObjectNotFoundError as error:
            errors.append(repr(error))

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert len(caplog.records) > 10, "debug logging was captured"
    assert SECRET not in logged
    assert len(errors) == 2 and not any(SECRET in error for error in errors)
    assert SECRET not in s3_store.model_dump_json()
    assert SECRET not in repr(s3_store)
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != SECRET


@pytest.mark.parametrize(
    ("key", "staged_as"),
    [("cat.png", "cat.png"), ("../../etc/passwd", "passwd"), ("in/../../x.png", "x.png")],
)
def test_inputs_are_staged_inside_the_workspace(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path, key: str, staged_as: str
) -> None:
    # A real image: staging also checks that the input is one.
    image = landscape_png(64, 48)
    s3_store.client.put_object(Bucket=bucket, Key=key, Body=image)
    stack = _stack(s3_store, bucket, tmp_path)
    workspace = Workspace.create(stack.nas_root, "run-1")
    request = VideoRequest(prompt="a cat", image_uri=f"s3://{bucket}/{key}")

    staged = stage_inputs.fn(stack, request, workspace)

    assert staged == workspace.inputs / staged_as
    assert staged.read_bytes() == image
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [staged]


def test_an_input_key_naming_a_parent_directory_is_refused(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    s3_store.client.put_object(Bucket=bucket, Key="in/..", Body=b"x")
    stack = _stack(s3_store, bucket, tmp_path)
    workspace = Workspace.create(stack.nas_root, "run-2")
    request = VideoRequest(prompt="a cat", image_uri=f"s3://{bucket}/in/..")

    with pytest.raises(WorkspacePathError, match=r"'\.\.' escapes the workspace"):
        stage_inputs.fn(stack, request, workspace)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def _stack(store: S3ObjectStore, bucket: str, tmp_path: Path) -> GpuflowStack:
    return GpuflowStack(
        nas_root=tmp_path / "nas",
        jobs_root=REPOSITORY / "jobs",
        object_store=store,
        models_uri=f"s3://{bucket}/models",
        outputs_uri=f"s3://{bucket}/outputs",
        compute=LocalSubprocess(devices=[], lock_dir=tmp_path / "nas" / "locks"),
    )


def test_a_share_url_fetches_the_object_over_https_style_get_and_carries_no_secret(
    s3_store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:

    source = random_file(tmp_path / "video.mp4", 3000)
    uri = f"s3://{bucket}/outputs/run/video.mp4"
    s3_store.upload(source, uri)

    url = s3_store.share_url(uri, 3600)
    assert url is not None
    # A plain GET, no credentials of the caller's: what a browser does with the link.
    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200 and fetched.content == source.read_bytes()
    parts = urlsplit(url)
    assert parts.path == f"/{bucket}/outputs/run/video.mp4"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["3600"]
    assert query["X-Amz-Credential"][0].startswith("testing/")
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Signature"]
    assert SECRET not in url


def test_a_local_store_has_no_share_url(tmp_path: Path) -> None:
    store = LocalObjectStore(root=tmp_path)
    uri = store.uri_for("outputs/video.mp4")
    assert store.share_url(uri, 3600) is None


def test_a_run_into_an_s3_store_ends_with_a_presigned_link_to_its_video(
    s3_store: S3ObjectStore,
    bucket: str,
    layout: EmbeddedLayout,
    prefect_server: LocalServer,
    gpu_limit_name: str,
) -> None:
    # Inputs and model from the embedded file:// store, the result into S3 (moto).
    embedded = layout.stack()
    stack = embedded.model_copy(
        update={
            "object_store": s3_store,
            "model_store": embedded.object_store,
            "outputs_uri": f"s3://{bucket}/outputs",
            "gpu_limit": gpu_limit_name,
            "result_link_expiry_s": 900,
        }
    )
    name = f"s3-result-{uuid.uuid4().hex[:8]}"
    asyncio.run(bootstrap(stack, name, gpu_slots=1))
    request = VideoRequest(
        prompt="a slow pan", image_uri=layout.seed_samples(), resolution="128x96", num_frames=5
    )

    async def run() -> tuple[str, list[Any]]:
        state = await generate_video(request=request, stack=name, return_state=True)
        assert state.is_completed(), state.message
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
        return str(await state.aresult()), artifacts

    uri, artifacts = asyncio.run(run())
    (result,) = [artifact for artifact in artifacts if artifact.key == "video-i2v"]
    text = str(result.data)
    assert f"URI: `{uri}`" in text
    link = re.search(r"\[Download the video\]\((\S+)\) \(a presigned link, valid until ", text)
    assert link is not None, text
    assert parse_qs(urlsplit(link[1]).query)["X-Amz-Expires"] == ["900"]
    assert SECRET not in text
    video = httpx.get(link[1], timeout=30)
    assert video.status_code == 200
    assert (
        video.content
        == s3_store.client.get_object(Bucket=bucket, Key=ObjectUri.parse(uri).key)["Body"].read()
    )
