"""The main flow end to end against a real Prefect server, real uv, real ffmpeg."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import time
import uuid
import zlib
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import State

from gpuflow.core.errors import GpuCapacityError, ObjectNotFoundError, RequestError
from gpuflow.core.request import VideoRequest
from gpuflow.core.workspace import kept_until
from gpuflow.envs.catalog import METADATA, environment_key
from gpuflow.ops.embedded import DEFAULT_MODEL, EmbeddedLayout, repository_jobs_root
from gpuflow.pipeline.generate_video import generate_video
from gpuflow.storage.local import LocalObjectStore
from gpuflow.storage.model_cache import MANIFEST
from gpuflow.storage.uri import ObjectUri
from tests.support.media import frame, probe

pytestmark = pytest.mark.integration


def _request(layout: EmbeddedLayout, **overrides: Any) -> VideoRequest:
    fields: dict[str, Any] = {
        "prompt": "zoom in on the hills",
        "image_uri": layout.seed_samples(),
        "resolution": "256x160",
        "num_frames": 21,
        "fps": 12,
        "seed": 3,
    }
    fields.update(overrides)
    return VideoRequest.model_validate(fields)


def _run(request: VideoRequest | dict[str, Any], stack_name: str) -> State[str]:
    async def run() -> object:
        return await generate_video(request=request, stack=stack_name, return_state=True)

    state = asyncio.run(run())
    assert isinstance(state, State)
    return state


async def _artifacts(flow_run_id: UUID) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


async def _active_slots(name: str) -> int:
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
        return int(limit.active_slots)


def _assert_clean_failure(
    layout: EmbeddedLayout, state: State[str], gpu_limit: str, *, workspace_created: bool = True
) -> None:
    run_id = str(state.state_details.flow_run_id)
    assert not (layout.store_root / "outputs" / run_id).exists(), "something was uploaded"
    assert asyncio.run(_active_slots(gpu_limit)) == 0, "GPU slots not released"
    workspace = layout.nas_root / "workspaces" / run_id
    if not workspace_created:
        assert not workspace.exists(), "a workspace for a request refused at the edge"
        return
    # The workspace stays for debugging, marked with when the janitor may remove it.
    keep_until = kept_until(workspace)
    assert keep_until is not None, "failed workspace not kept with a failure marker"
    assert keep_until > time.time() + layout.stack().keep_failed_workspaces_s - 600


def test_generates_a_watermarked_video_matching_the_request(
    layout: EmbeddedLayout, stack_name: str, gpu_limit_name: str
) -> None:
    request = _request(layout)
    state = _run(request, stack_name)
    assert state.is_completed(), state.message
    uri = state.result()
    assert isinstance(uri, str)
    run_id = str(state.state_details.flow_run_id)
    assert uri == str(ObjectUri.parse(layout.stack().outputs_uri).join(run_id, "video.mp4"))
    video = Path(ObjectUri.parse(uri).key)

    facts = probe(video)
    assert (facts.width, facts.height) == (256, 160)
    assert facts.frames == 21
    assert facts.duration_s == pytest.approx(21 / 12, abs=0.01)
    assert facts.codec == "h264"

    # Render the same request without postprocessing (the job is deterministic) and
    # compare: frames differ where the watermark sits, and barely anywhere else.
    raw = _render_raw(layout, request, video.parent / "raw-reference.mp4")
    marked = frame(video, 10, 256, 160).astype(np.int16)
    plain = frame(raw, 10, 256, 160).astype(np.int16)
    corner = np.abs(marked[-30:, -90:] - plain[-30:, -90:]).mean()
    elsewhere = np.abs(marked[:80, :120] - plain[:80, :120]).mean()
    assert corner > 10 * max(elsewhere, 0.5), (corner, elsewhere)

    # Workspace removed, GPU slots returned, artifacts written.
    assert not (layout.nas_root / "workspaces" / run_id).exists()
    assert asyncio.run(_active_slots(gpu_limit_name)) == 0
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))  # type: ignore[arg-type]
    by_type = {artifact.type: artifact for artifact in artifacts}
    assert set(by_type) >= {"progress", "markdown", "table"}
    assert float(by_type["progress"].data) == 100.0
    result = by_type["markdown"]
    # Keyed by job, so every run of it is a version of one artifact in the UI; the URI and
    # local path are there to copy (no file:// link, which the browser would block).
    assert result.key == "video-i2v"
    assert f"URI: `{uri}`" in str(result.data) and f"`{video}`" in str(result.data)
    assert "](file:" not in str(result.data)
    assert by_type["table"].key == "costs-i2v"
    costs = {row["item"]: row for row in json.loads(str(by_type["table"].data))}
    steps = {"download_model", "resolve_environment", "run_gpu_job", "postprocess", "upload"}
    assert set(costs) >= steps
    assert costs["gpu"]["unit"] == "GPU-s" and float(costs["gpu"]["value"]) > 0
    assert int(costs["uploaded"]["value"]) == video.stat().st_size


def _render_raw(layout: EmbeddedLayout, request: VideoRequest, output: Path) -> Path:
    env_root = layout.nas_root / "envs" / environment_key(repository_jobs_root() / "i2v")
    image = layout.store_root / "samples" / "landscape.png"
    subprocess.run(
        [
            str(env_root / ".venv" / "bin" / "i2v-job"),
            "--model-dir", str(layout.stack().model_cache.model_dir(DEFAULT_MODEL)),
            "--image", str(image), "--prompt", request.prompt,
            "--width", str(request.width), "--height", str(request.height),
            "--frames", str(request.num_frames), "--fps", str(request.fps),
            "--seed", str(request.seed), "--output", str(output),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return output


def test_second_run_reuses_cached_model_and_environment(
    layout: EmbeddedLayout, stack_name: str
) -> None:
    assert _run(_request(layout, seed=1), stack_name).is_completed()
    model_dir = layout.nas_root / "models" / DEFAULT_MODEL.name / DEFAULT_MODEL.revision
    env_root = layout.nas_root / "envs" / environment_key(repository_jobs_root() / "i2v")
    weights_inode = (model_dir / "weights.npz").stat().st_ino
    downloaded_at = json.loads((model_dir / MANIFEST).read_text())["downloaded_at"]
    env_created = json.loads((env_root / METADATA).read_text())["created"]
    python_inode = (env_root / ".venv" / "bin" / "python").lstat().st_ino

    assert _run(_request(layout, seed=2), stack_name).is_completed()

    assert (model_dir / "weights.npz").stat().st_ino == weights_inode, "model copied again"
    assert json.loads((model_dir / MANIFEST).read_text())["downloaded_at"] == downloaded_at
    assert json.loads((env_root / METADATA).read_text())["created"] == env_created, "env rebuilt"
    assert (env_root / ".venv" / "bin" / "python").lstat().st_ino == python_inode


def test_missing_input_object_fails_cleanly(
    layout: EmbeddedLayout, stack_name: str, gpu_limit_name: str
) -> None:
    missing = LocalObjectStore(root=layout.store_root).uri_for("samples/nope.png")
    state = _run(_request(layout, image_uri=missing), stack_name)
    assert state.is_failed()
    with pytest.raises(ObjectNotFoundError, match=r"samples/nope\.png"):
        state.result()
    _assert_clean_failure(layout, state, gpu_limit_name)


def _bomb_header() -> bytes:
    """A PNG claiming 100000x100000 pixels, in a hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"this is not a PNG", "not a readable image"), (_bomb_header(), "decompression bomb")],
)
def test_a_bad_image_is_refused_when_staged_before_any_gpu(
    layout: EmbeddedLayout, stack_name: str, gpu_limit_name: str, content: bytes, reason: str
) -> None:
    broken = layout.store_root / "samples" / f"broken-{uuid.uuid4().hex[:6]}.png"
    broken.write_bytes(content)
    state = _run(
        _request(
            layout,
            image_uri=LocalObjectStore(root=layout.store_root).uri_for(
                str(broken.relative_to(layout.store_root))
            ),
        ),
        stack_name,
    )
    assert state.is_failed()
    with pytest.raises(RequestError, match=reason) as failure:
        state.result()
    assert broken.name in str(failure.value)
    run_counts = asyncio.run(_task_run_counts(state.state_details.flow_run_id))  # type: ignore[arg-type]
    assert run_counts.get("run_gpu_job", 0) == 0 and run_counts.get("download_model", 0) == 0
    _assert_clean_failure(layout, state, gpu_limit_name)


def test_more_gpus_than_the_limit_is_refused_before_any_download(
    layout: EmbeddedLayout, stack_name: str, gpu_limit_name: str
) -> None:
    unseen_model = {"name": "never-downloaded", "revision": "v1"}
    state = _run(_request(layout, gpus=3, model=unseen_model), stack_name)
    assert state.is_failed()
    with pytest.raises(GpuCapacityError, match=r"gpus=3 .* 2 GPU slots"):
        state.result()
    assert not (layout.nas_root / "models" / "never-downloaded").exists()
    _assert_clean_failure(layout, state, gpu_limit_name, workspace_created=False)


def test_a_model_name_with_a_typo_fails_before_anything_is_created(
    layout: EmbeddedLayout, stack_name: str, gpu_limit_name: str
) -> None:
    typo = {"name": "wan2.2-i2v-standni", "revision": "v1"}
    state = _run(_request(layout, model=typo), stack_name)
    assert state.is_failed()
    with pytest.raises(ObjectNotFoundError, match=r"wan2\.2-i2v-standni"):
        state.result()
    assert not (layout.nas_root / "models" / "wan2.2-i2v-standni").exists()
    _assert_clean_failure(layout, state, gpu_limit_name, workspace_created=False)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("resolution", "300x200", "300"), ("num_frames", 20, "20"), ("resolution", "64x4096", "4096")],
)
def test_invalid_parameters_are_rejected_naming_the_value(
    layout: EmbeddedLayout, stack_name: str, field: str, value: object, expected: str
) -> None:
    request = _request(layout).model_dump(mode="json") | {field: value}
    state = _run(request, stack_name)
    assert state.is_failed()
    assert field in str(state.message) and expected in str(state.message)


async def _task_run_counts(flow_run_id: UUID) -> dict[str, int]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.task_key.split("-")[0]: run.run_count for run in runs}
