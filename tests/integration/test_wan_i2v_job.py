"""The Wan I2V job (diffusers) through its real console script in its real uv environment.

The model is the tiny, randomly initialised Wan I2V pipeline (``wan_i2v_job.tiny_model``)
in the diffusers layout, loaded by the same ``from_pretrained`` call a real checkpoint
takes. Everything runs on the CPU; CUDA out of memory (exit 4) needs a GPU and is not
provoked here (host out of memory is, under an address-space limit).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from gpuflow_progress import ExitCode, Metric, Output, Progress, parse_line
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import State

from gpuflow.core.request import VideoRequest
from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.ops import samples
from gpuflow.ops.embedded import WAN_TINY_MODEL, EmbeddedLayout
from gpuflow.pipeline.generate_video import generate_video
from gpuflow.pipeline.prebuild import job_names, prebuild_environments
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.storage.uri import ObjectUri
from tests.support.media import probe

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(306)]

# The tiny model's gpuflow-sampling.json asks for two denoising steps.
STEPS = 2


@pytest.fixture(scope="module")
def model_dir(wan_env: ResolvedEnv, layout: EmbeddedLayout) -> Path:
    return layout.store_root / "models" / WAN_TINY_MODEL.name / WAN_TINY_MODEL.revision


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    samples.write_image(path)
    return path


def _arguments(model_dir: Path, image: Path, output: Path, **overrides: str) -> list[str]:
    args = {
        "--model-dir": str(model_dir), "--image": str(image), "--prompt": "zoom in on the hills",
        "--width": "64", "--height": "64", "--frames": "5", "--fps": "8", "--seed": "1",
        "--output": str(output),
    }  # fmt: skip
    args.update(overrides)
    return [f"{name}={value}" for name, value in args.items()]


def _environment(**extra: str) -> dict[str, str]:
    # What the local compute target gives a job on a machine without GPUs.
    base = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "CUDA_VISIBLE_DEVICES": ""}
    return base | extra


def _job(
    env: ResolvedEnv, arguments: list[str], **variables: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env.script("wan-i2v-job")), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_environment() | variables,
    )


def test_the_job_generates_the_requested_video_and_reports_each_step(
    wan_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "raw.mp4"
    completed = _job(wan_env, _arguments(model_dir, image, output))
    assert completed.returncode == 0, completed.stderr[-3000:]
    events = [parse_line(line) for line in completed.stdout.splitlines()]
    progress = [event for event in events if isinstance(event, Progress)]
    assert [(p.done, p.total) for p in progress] == [(1, STEPS), (2, STEPS)]
    assert Output("video", str(output)) in events
    assert any(isinstance(e, Metric) and e.name == "seconds_per_step" for e in events)
    facts = probe(output)
    assert (facts.width, facts.height, facts.frames, facts.codec) == (64, 64, 5, "h264")
    assert list(output.parent.iterdir()) == [output], "partial files left behind"


def test_a_request_for_wan_i2v_gets_a_watermarked_video_through_the_flow(
    wan_env: ResolvedEnv, layout: EmbeddedLayout, stack_name: str
) -> None:
    request = VideoRequest.model_validate(
        {
            "prompt": "zoom in on the hills",
            "image_uri": layout.seed_samples(),
            "resolution": "64x64",
            "num_frames": 5,
            "fps": 8,
            "seed": 4,
            "job": "wan-i2v",
            "model": {"name": WAN_TINY_MODEL.name, "revision": WAN_TINY_MODEL.revision},
        }
    )

    async def run() -> tuple[State[str], list[object]]:
        state = await generate_video(request=request, stack=stack_name, return_state=True)
        assert isinstance(state, State)
        async with get_client() as client:
            run_id = state.state_details.flow_run_id
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        return state, list(artifacts)

    state, artifacts = asyncio.run(run())
    assert state.is_completed(), state.message
    uri = state.result()
    assert isinstance(uri, str) and uri.endswith("/video.mp4")
    facts = probe(Path(ObjectUri.parse(uri).key))
    assert (facts.width, facts.height, facts.frames) == (64, 64, 5)
    # The model went through the NAS model cache, the job through the wan-i2v env.
    cached = layout.nas_root / "models" / WAN_TINY_MODEL.name / WAN_TINY_MODEL.revision
    assert (cached / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    progress = [a for a in artifacts if getattr(a, "type", None) == "progress"]
    assert progress and float(progress[0].data) == 100.0  # type: ignore[attr-defined]
    assert not (layout.nas_root / "workspaces" / str(state.state_details.flow_run_id)).exists()


def test_the_prebuild_flow_covers_the_wan_job(wan_env: ResolvedEnv, stack_name: str) -> None:
    assert "wan-i2v" in job_names(GpuflowStack.load(stack_name))  # type: ignore[arg-type]
    # The session built the env already: the flow finds it ready under the same key.
    results = prebuild_environments(stack=stack_name, jobs=["wan-i2v"])
    assert [(r["job"], r["key"], r["built"]) for r in results] == [("wan-i2v", wan_env.key, False)]


def test_under_torchrun_rank_zero_alone_writes_and_reports(
    wan_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "raw.mp4"
    completed = subprocess.run(
        [
            str(wan_env.script("torchrun")), "--standalone", "--nproc-per-node=2",
            "--tee=3", "--no-python", str(wan_env.script("wan-i2v-job")),
            *_arguments(model_dir, image, output),
        ],
        capture_output=True, text=True, timeout=300, check=False,
        env=_environment(OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    # --tee prefixes each rank's lines with "[default<rank>]:".
    by_rank: dict[str, list[str]] = {"0": [], "1": []}
    for line in completed.stdout.splitlines():
        prefix, _, rest = line.partition("]:")
        if prefix.startswith("[default"):
            by_rank[prefix.removeprefix("[default")].append(rest)
    events = {rank: [parse_line(line) for line in lines] for rank, lines in by_rank.items()}
    assert [e.done for e in events["0"] if isinstance(e, Progress)] == [1, 2]
    assert [e for e in events["0"] if isinstance(e, Output)] == [Output("video", str(output))]
    assert not [e for e in events["1"] if e is not None], "rank 1 reported events"
    assert any(f"rank 0 writes {output}" in line for line in by_rank["1"])
    assert probe(output).frames == 5
    assert list(output.parent.iterdir()) == [output], "more than one file written"


def test_a_model_of_another_architecture_is_a_config_error(
    wan_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    standin = tmp_path / "standin"
    samples.write_model(standin, "standin", "v1")
    completed = _job(wan_env, _arguments(standin, image, tmp_path / "a.mp4"))
    assert completed.returncode == ExitCode.CONFIG_ERROR, completed.stderr[-2000:]
    assert "no model_index.json" in completed.stderr

    text_to_video = tmp_path / "t2v"
    shutil.copytree(model_dir, text_to_video)
    index = json.loads((text_to_video / "model_index.json").read_text())
    (text_to_video / "model_index.json").write_text(
        json.dumps(index | {"_class_name": "WanPipeline"})
    )
    completed = _job(wan_env, _arguments(text_to_video, image, tmp_path / "b.mp4"))
    assert completed.returncode == ExitCode.CONFIG_ERROR
    assert "'WanPipeline' is not 'WanImageToVideoPipeline'" in completed.stderr

    # The right class name over weights of another shape: diffusers refuses to load them.
    mismatched = tmp_path / "mismatched"
    shutil.copytree(model_dir, mismatched)
    config_path = mismatched / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"num_layers": config["num_layers"] + 1}))
    completed = _job(wan_env, _arguments(mismatched, image, tmp_path / "c.mp4"))
    assert completed.returncode == ExitCode.CONFIG_ERROR, completed.stderr[-2000:]
    assert f"cannot load {mismatched} as a Wan I2V pipeline" in completed.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_an_unreadable_image_is_an_input_error(
    wan_env: ResolvedEnv, model_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    completed = _job(wan_env, _arguments(model_dir, bad, tmp_path / "out.mp4"))
    assert completed.returncode == ExitCode.INPUT_ERROR
    assert f"input image {bad} is not a readable image" in completed.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_gpus_given_to_a_job_that_cannot_use_them_are_an_environment_error(
    wan_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    # The job was given a GPU (as the local target does per slot) that CUDA cannot reach:
    # here no driver at all; on a GPU host, an index beyond its devices.
    completed = _job(
        wan_env, _arguments(model_dir, image, tmp_path / "out.mp4"), CUDA_VISIBLE_DEVICES="63"
    )
    assert completed.returncode == ExitCode.ENVIRONMENT_ERROR, completed.stderr[-2000:]
    assert "CUDA_VISIBLE_DEVICES=63 gives this job GPUs" in completed.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_sizes_the_model_cannot_make_are_a_config_error_before_loading(
    wan_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    completed = _job(wan_env, _arguments(model_dir, image, tmp_path / "o.mp4", **{"--frames": "6"}))
    assert completed.returncode == ExitCode.CONFIG_ERROR
    assert "--frames 6 is not 4k+1" in completed.stderr and "try 5" in completed.stderr
    completed = _job(wan_env, _arguments(model_dir, image, tmp_path / "o.mp4", **{"--width": "72"}))
    assert completed.returncode == ExitCode.CONFIG_ERROR and "--width 72" in completed.stderr


def test_running_out_of_host_memory_is_a_resource_error(
    wan_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    # A real allocation failure: the largest video the request schema allows past a 6 GiB
    # address-space limit (CUDA out of memory needs a GPU; it maps to 4 the same way).
    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    arguments = _arguments(
        model_dir, image, tmp_path / "out.mp4",
        **{"--width": "1280", "--height": "720", "--frames": "81"},
    )  # fmt: skip
    completed = subprocess.run(
        [str(wan_env.script("wan-i2v-job")), *arguments],
        capture_output=True, text=True, timeout=600, check=False, env=_environment(),
        preexec_fn=limit_address_space,
    )  # fmt: skip
    assert completed.returncode == ExitCode.RESOURCE_ERROR, completed.stderr[-2000:]
    assert "out of memory in host memory at 1280x720, 81 frames" in completed.stderr
    assert not (tmp_path / "out.mp4").exists()
