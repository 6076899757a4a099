"""The store blocks saved on a real Prefect server, inside a stack, and loaded back."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect_aws import AwsCredentials
from pydantic import SecretStr

from gpuflow.compute.local import LocalSubprocess
from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.storage.https import HttpSource
from gpuflow.storage.s3 import S3ObjectStore
from tests.storage.conftest import SECRET

pytestmark = pytest.mark.integration


def test_stack_with_s3_store_and_https_models_round_trips_without_showing_secrets(
    prefect_server: LocalServer, tmp_path: Path
) -> None:
    name = f"s3-stack-{uuid.uuid4().hex[:8]}"
    stack = GpuflowStack(
        nas_root=tmp_path / "nas",
        jobs_root=tmp_path / "jobs",
        object_store=S3ObjectStore.for_provider(
            "oss",
            "cn-hangzhou",
            credentials=AwsCredentials(aws_access_key_id="LTAI-id", aws_secret_access_key=SECRET),
        ),
        model_store=HttpSource(bearer_token=SecretStr(SECRET)),
        models_uri="https://models.example.com/hub",
        outputs_uri="oss://results/videos",
        compute=LocalSubprocess(devices=[], lock_dir=tmp_path / "locks"),
    )

    async def save_and_read() -> tuple[GpuflowStack, str]:
        await stack.asave(name, overwrite=True)
        loaded = await GpuflowStack.aload(name)
        async with get_client() as client:
            document = await client.read_block_document_by_name(
                name, "gpuflow-stack", include_secrets=False
            )
        return loaded, document.model_dump_json()

    loaded, stored_view = asyncio.run(save_and_read())

    assert isinstance(loaded.object_store, S3ObjectStore)
    assert loaded.object_store.scheme == "oss"
    assert loaded.object_store.endpoint_url == "https://oss-cn-hangzhou.aliyuncs.com"
    assert loaded.object_store.credentials.aws_secret_access_key is not None
    assert loaded.object_store.credentials.aws_secret_access_key.get_secret_value() == SECRET
    assert isinstance(loaded.store_for(loaded.models_uri), HttpSource)
    assert SECRET not in stored_view
    assert SECRET not in repr(loaded)
