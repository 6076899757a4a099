from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuflow.core.request import parse_request
from gpuflow.core.workspace import Workspace
from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.pipeline.job_contract import job_spec
from gpuflow.storage.model_cache import CachedModel

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture(scope="module")
def i2v_arguments() -> Callable[[list[str]], argparse.Namespace]:
    # The reference job's own parser, as its console script builds it.
    sys.path.insert(0, str(JOBS / "i2v" / "src"))
    try:
        from i2v_job.__main__ import parse_arguments
    finally:
        sys.path.remove(str(JOBS / "i2v" / "src"))
    return parse_arguments


@pytest.mark.parametrize(
    "prompt",
    ["--help", "-cinematic", "-h", "--output=/etc/passwd", "--", "-", "a\n--seed 9", "="],
)
def test_no_prompt_is_read_as_an_option_by_the_job(
    tmp_path: Path, i2v_arguments: Callable[[list[str]], argparse.Namespace], prompt: str
) -> None:
    request = parse_request({"prompt": prompt, "image_uri": "file:///srv/cat.png", "seed": 7})
    workspace = Workspace.create(tmp_path, "local-" + "0" * 32)
    job = job_spec(
        request,
        JOBS / "i2v",
        ResolvedEnv(key="k", root=tmp_path / "env", built=False),
        CachedModel(path=tmp_path / "model", downloaded=False, bytes_downloaded=0),
        workspace.input_path("cat.png"),
        workspace,
        60.0,
    )
    parsed = i2v_arguments(job.argv[1:])
    assert parsed.prompt == prompt
    assert parsed.seed == 7 and parsed.output == workspace.output_path("raw.mp4")


@pytest.mark.parametrize(("gpu_type", "placed_on"), [("", None), ("h100", "h100")])
def test_an_empty_gpu_type_places_the_job_anywhere(
    tmp_path: Path, gpu_type: str, placed_on: str | None
) -> None:
    # The backends read None as any type: no node selector, no ECS placement constraint.
    request = parse_request(
        {"prompt": "x", "image_uri": "file:///srv/cat.png", "gpu_type": gpu_type}
    )
    workspace = Workspace.create(tmp_path, "local-" + "1" * 32)
    job = job_spec(
        request,
        JOBS / "i2v",
        ResolvedEnv(key="k", root=tmp_path / "env", built=False),
        CachedModel(path=tmp_path / "model", downloaded=False, bytes_downloaded=0),
        workspace.input_path("cat.png"),
        workspace,
        60.0,
    )
    assert job.gpu_type == placed_on
