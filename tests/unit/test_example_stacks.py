"""The example stacks in ``blocks/`` are valid stacks of the kinds they say they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuflow.compute.base import ComputeTarget
from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob
from gpuflow.compute.local import LocalSubprocess
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.storage.s3 import S3ObjectStore

BLOCKS = Path(__file__).resolve().parents[2] / "blocks"
COMPUTE: dict[str, type[ComputeTarget]] = {
    "single-host.yaml": LocalSubprocess,
    "kubernetes.yaml": KubernetesPyTorchJob,
    "ecs.yaml": EcsTask,
}


def test_every_example_is_checked() -> None:
    assert sorted(path.name for path in BLOCKS.glob("*.yaml")) == sorted(COMPUTE)


@pytest.mark.parametrize("name", sorted(COMPUTE))
def test_the_example_is_a_valid_stack(name: str) -> None:
    stack = GpuflowStack.model_validate(yaml.safe_load((BLOCKS / name).read_text()))
    assert isinstance(stack.compute, COMPUTE[name])
    assert isinstance(stack.object_store, S3ObjectStore)
    assert isinstance(stack.store_for(stack.models_uri), S3ObjectStore)
    assert stack.nas_root == Path("/mnt/nas")
