"""Choosing per step where postprocess runs: in the flow, as a local job, or an ECS task."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.local import LocalSubprocess
from gpuflow.core.errors import JobFailedError
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.postprocess.base import PostprocessError
from gpuflow.postprocess.job import postprocess_job_spec, run_postprocess
from gpuflow.postprocess.watermark import Watermark, ffmpeg_binary
from tests.ecs.conftest import NAS, recorded
from tests.support.ecs_answers import AnswersProxy
from tests.support.media import probe

pytestmark = pytest.mark.integration


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def raw_video(tmp_path: Path) -> Path:
    raw = tmp_path / "raw.mp4"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc=size=96x64:rate=8", "-t", "1", "-pix_fmt", "yuv420p", str(raw)],
        check=True,
    )  # fmt: skip
    return raw


def test_postprocess_runs_as_a_job_on_a_compute_target(raw_video: Path, tmp_path: Path) -> None:
    compute = LocalSubprocess(lock_dir=tmp_path / "locks")
    destination = tmp_path / "video.mp4"
    lines = _Lines()
    written = asyncio.run(
        run_postprocess(compute, [Watermark(text="ecs")], raw_video, destination, tmp_path, lines)
    )
    assert written == destination
    facts = probe(destination)
    assert (facts.width, facts.height, facts.codec) == (96, 64, "h264")
    assert lines.lines[-1] == f"postprocess: wrote {destination}"


def test_a_missing_logo_fails_the_job_as_a_config_error(raw_video: Path, tmp_path: Path) -> None:
    compute = LocalSubprocess(lock_dir=tmp_path / "locks")
    logo = tmp_path / "no-such-logo.png"
    with pytest.raises(JobFailedError, match=r"no-such-logo\.png") as caught:
        asyncio.run(
            run_postprocess(
                compute, [Watermark(text=None, logo=logo)], raw_video, tmp_path / "v.mp4",
                tmp_path, _Lines(),
            )
        )  # fmt: skip
    assert caught.value.exit_code == 1
    assert not caught.value.retryable
    assert raw_video.is_file(), "the raw video is kept"


def test_postprocess_on_fargate_runs_the_job_module_in_the_image(
    make_target: Callable[..., EcsTask],
    cluster: str,
    answers: AnswersProxy,
    task_transitions: Callable[[dict[str, Any]], None],
    tmp_path: Path,
) -> None:
    fargate = make_target(launch_type="FARGATE")
    raw, destination = tmp_path / "raw.mp4", tmp_path / "video.mp4"
    spec = postprocess_job_spec(fargate, [Watermark()], raw, destination, tmp_path)
    fargate.refuse_impossible(spec)  # CPU-only: Fargate takes it
    command = fargate.run_task_request(spec, "arn:td", None, "t").overrides.container_overrides[0]
    assert command.command is not None
    assert command.command[4:7] == ["python", "-m", "gpuflow.postprocess.job"]
    assert command.command[-2:] == [str(raw), str(destination)]

    # moto runs no container, so nothing is written: the step says where it looked.
    task_transitions({"progression": "immediate"})
    answers.on_stop(cluster, recorded("stopped_exit_0"))
    with pytest.raises(PostprocessError, match=r"wrote no .*video\.mp4.*NAS mounted"):
        asyncio.run(run_postprocess(fargate, [Watermark()], raw, destination, tmp_path, _Lines()))


def test_a_stack_with_ecs_steps_saves_and_loads(
    prefect_server: LocalServer, layout: EmbeddedLayout, make_target: Callable[..., EcsTask]
) -> None:
    gpu = make_target(
        launch_type=None,
        capacity_provider_strategy=[{"capacityProvider": "gpu-g6e", "weight": 1}],
    )
    burst = make_target(launch_type="FARGATE")
    stack = layout.stack().model_copy(
        update={"compute": gpu, "postprocess_compute": burst, "nas_root": Path(NAS.mount_path)}
    )
    name = f"ecs-{uuid.uuid4().hex[:8]}"
    stack.save(name)
    loaded = cast(GpuflowStack, GpuflowStack.load(name))
    assert isinstance(loaded.compute, EcsTask)
    assert isinstance(loaded.postprocess_compute, EcsTask)
    assert not loaded.compute.on_fargate
    assert loaded.postprocess_compute.on_fargate
    assert loaded.compute.secrets["HF_TOKEN"].get_secret_value().startswith("arn:aws:")
    assert loaded.compute.aws_credentials.aws_secret_access_key is not None


def test_a_stack_refuses_an_ecs_nas_mounted_elsewhere(
    layout: EmbeddedLayout, make_target: Callable[..., EcsTask]
) -> None:
    fields = {**dict(layout.stack()), "postprocess_compute": make_target()}
    with pytest.raises(
        ValueError, match=r"postprocess ECS target mounts the NAS at /mnt/gpuflow-nas"
    ):
        GpuflowStack(**fields)
    fields["nas_root"] = Path(NAS.mount_path)
    assert GpuflowStack(**fields).postprocess_compute is not None
