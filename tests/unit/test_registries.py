"""The registries of block types, and what is derived from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow.compute.backends import COMPUTE_BACKENDS
from gpuflow.core.errors import UriError
from gpuflow.envs.catalog import EnvCatalog
from gpuflow.envs.fabric import EnvironmentFabric
from gpuflow.ops.collection import BLOCK_TYPES
from gpuflow.postprocess.base import PostprocessStep
from gpuflow.postprocess.steps import POSTPROCESS_STEPS, step_type
from gpuflow.storage.https import HttpSource
from gpuflow.storage.local import LocalObjectStore
from gpuflow.storage.s3 import S3_COMPATIBLE, S3ObjectStore
from gpuflow.storage.stores import OBJECT_STORES, store_for


def test_the_collection_holds_every_registered_type() -> None:
    assert set(COMPUTE_BACKENDS) | set(OBJECT_STORES) | set(POSTPROCESS_STEPS) <= set(BLOCK_TYPES)
    slugs = [block.get_block_type_slug() for block in BLOCK_TYPES]
    assert len(slugs) == len(set(slugs)), "every block type has its own slug"


def test_the_fabric_block_is_the_plain_catalog_with_its_fields(tmp_path: Path) -> None:
    # `gpuflow env` uses the catalog; the UI edits the block: both must be one thing.
    assert EnvironmentFabric in BLOCK_TYPES
    block = EnvironmentFabric(root=tmp_path, python="3.11.7")
    assert isinstance(block, EnvCatalog)
    assert block.envs_dir == tmp_path / "envs" and block.python_version == "3.11.7"
    fields = EnvironmentFabric.model_json_schema()["properties"]
    assert set(EnvCatalog.model_fields) <= set(fields)
    assert fields["root"]["description"] == EnvCatalog.model_fields["root"].description


@pytest.mark.parametrize("step", POSTPROCESS_STEPS, ids=lambda step: step.__name__)
def test_postprocess_steps_hold_no_secrets(step: type[PostprocessStep]) -> None:
    # Steps are saved inline in the stack's document, where Prefect would store them in clear.
    assert step.model_json_schema()["secret_fields"] == []
    assert step_type(step.get_block_type_slug()) is step


def test_an_unknown_step_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown postprocess step 'blur' \(known: gpuflow-"):
        step_type("blur")


def test_the_uri_scheme_picks_the_store(tmp_path: Path) -> None:
    local = LocalObjectStore(root=tmp_path)
    oss = S3ObjectStore.for_provider("oss", "cn-hangzhou")
    stores = [local, oss]
    assert store_for(f"file://{tmp_path}/cat.png", stores) is local
    assert store_for("oss://bucket/cat.png", stores) is oss
    assert isinstance(store_for("https://example.com/cat.png", stores), HttpSource)
    default_s3 = store_for("s3://bucket/cat.png", stores)
    assert isinstance(default_s3, S3ObjectStore) and default_s3.scheme == "s3"
    with pytest.raises(UriError, match=r"no store of this stack serves tos:// URIs .*file://"):
        store_for("tos://bucket/cat.png", stores)


def test_every_s3_compatible_scheme_is_served_by_one_store_type() -> None:
    assert set(S3ObjectStore.schemes) == set(S3_COMPATIBLE)
    with pytest.raises(ValueError, match="no public endpoint is known for 'minio'"):
        S3ObjectStore.for_provider("minio", "us-east-1")
    with pytest.raises(ValueError, match="scheme 'gcs' is not one of"):
        S3ObjectStore(scheme="gcs")
