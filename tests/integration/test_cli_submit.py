"""`gpuflow submit` where the user is: a local picture is uploaded for the run."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.utilities.callables import parameter_schema

from gpuflow.ops.bootstrap import bootstrap
from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.generate_video import generate_video
from gpuflow.storage.uri import ObjectUri
from tests.support.deployed import GPUFLOW, Deployed, cli_env

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(445)]


def _gpuflow(
    prefect_server: LocalServer, state_dir: Path, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GPUFLOW, *args], env=cli_env(state_dir, prefect_server), cwd=cwd,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_local_image_is_uploaded_and_the_run_reads_it(
    deployed: Deployed,
    layout: EmbeddedLayout,
    prefect_server: LocalServer,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(Path(ObjectUri.parse(layout.seed_samples()).key).read_bytes())
    done = _gpuflow(
        prefect_server, state_dir, tmp_path, "submit", "--prompt", "a cat looks up",
        "--image-uri", "./cat.png", "--resolution", "128x96", "--num-frames", "5",
        "--stack", deployed.stack, "--follow", "--poll-s", "0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    uploaded_line = next(line for line in done.stdout.splitlines() if line.startswith("Uploaded"))
    uploaded = uploaded_line.split(" to ")[1]
    assert uploaded.endswith("/cat.png")
    assert Path(ObjectUri.parse(uploaded).key).read_bytes() == picture.read_bytes()
    run_id = UUID(
        next(ln for ln in done.stdout.splitlines() if ln.startswith("Submitted")).split()[2]
    )

    async def image_uri_of_run() -> object:
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).parameters["request"]["image_uri"]

    assert asyncio.run(image_uri_of_run()) == uploaded


def test_a_path_that_is_no_file_is_refused_before_anything_is_sent(
    prefect_server: LocalServer, state_dir: Path, tmp_path: Path
) -> None:
    done = _gpuflow(
        prefect_server, state_dir, tmp_path, "submit", "--prompt", "x", "--image-uri", "dog.png"
    )
    assert done.returncode == 1
    assert "image_uri 'dog.png' is neither an object URI" in done.stderr
    assert "Submitted" not in done.stdout


def test_a_file_uri_the_run_could_not_read_is_refused_before_the_run_exists(
    deployed: Deployed, layout: EmbeddedLayout, prefect_server: LocalServer, state_dir: Path
) -> None:
    store = layout.store_root.resolve()
    missing_in_store = f"file://{store}/samples/missing-{uuid.uuid4().hex[:6]}.png"
    refusals = {
        "file:///nonexist.png": (
            f"image_uri 'file:///nonexist.png' is outside the stack's file:// store {store}: "
            "pass the picture's local path instead"
        ),
        missing_in_store: (
            f"image_uri {missing_in_store!r}: no such file in the stack's file:// store {store}"
        ),
    }
    for image_uri, refusal in refusals.items():
        for dry_run in ([], ["--dry-run"]):
            done = _gpuflow(
                prefect_server, state_dir, state_dir, "submit", "--prompt", "x",
                "--image-uri", image_uri, "--stack", deployed.stack, *dry_run,
            )  # fmt: skip
            assert done.returncode == 1, done.stdout + done.stderr
            assert refusal in done.stderr
            assert "Submitted" not in done.stdout and "Dry run" not in done.stderr


def test_more_gpus_than_the_limit_holds_are_refused_naming_the_cap(
    deployed: Deployed, layout: EmbeddedLayout, prefect_server: LocalServer, state_dir: Path
) -> None:
    # The deployed stack's GPU limit `gpu` has 2 slots (tests/support/deployed.py).
    done = _gpuflow(
        prefect_server, state_dir, state_dir, "submit", "--prompt", "x",
        "--image-uri", layout.seed_samples(), "--gpus", "3", "--stack", deployed.stack,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gpus=3 but the limit 'gpu' has only 2 GPU slots" in done.stderr
    assert "Submitted" not in done.stdout


def test_gpus_beyond_the_request_bound_are_refused_by_the_real_cap_first(
    deployed: Deployed, layout: EmbeddedLayout, prefect_server: LocalServer, state_dir: Path
) -> None:
    done = _gpuflow(
        prefect_server, state_dir, state_dir, "submit", "--prompt", "x",
        "--image-uri", layout.seed_samples(), "--gpus", "99", "--stack", deployed.stack,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gpus=99 but the limit 'gpu' has only 2 GPU slots" in done.stderr
    assert "64" not in done.stderr
    assert "Submitted" not in done.stdout


def test_a_limit_larger_than_the_request_bound_leaves_the_bound_to_refuse_naming_it(
    deployed: Deployed,
    layout: EmbeddedLayout,
    prefect_server: LocalServer,
    state_dir: Path,
    gpu_limit_name: str,
) -> None:
    big = f"big-{uuid.uuid4().hex[:8]}"
    stack = layout.stack().model_copy(update={"gpu_limit": gpu_limit_name})
    asyncio.run(bootstrap(stack, big, gpu_slots=128))
    done = _gpuflow(
        prefect_server, state_dir, state_dir, "submit", "--prompt", "x",
        "--image-uri", layout.seed_samples(), "--gpus", "99", "--stack", big,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gpus 99 is more than 64, the most one request may ask for" in done.stderr
    assert "sanity bound" in done.stderr
    assert "Submitted" not in done.stdout


def test_a_run_on_a_pool_no_worker_polls_says_how_to_start_one(
    stack_name: str, layout: EmbeddedLayout, prefect_server: LocalServer, state_dir: Path
) -> None:
    pool = f"idle-{uuid.uuid4().hex[:8]}"

    async def deployment_on_an_idle_pool() -> str:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            await client.create_work_queue(name="normal", work_pool_name=pool)
            flow_id = await client.create_flow_from_name(generate_video.name)
            await client.create_deployment(
                flow_id,
                name=pool,
                work_pool_name=pool,
                parameter_openapi_schema=parameter_schema(generate_video).model_dump(
                    exclude_unset=True
                ),
            )
        return f"{generate_video.name}/{pool}"

    deployment = asyncio.run(deployment_on_an_idle_pool())
    done = _gpuflow(
        prefect_server, state_dir, state_dir, "submit", "--prompt", "x",
        "--image-uri", layout.seed_samples(), "--deployment", deployment, "--stack", stack_name,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Submitted run" in done.stdout
    assert (
        f"warning: no worker polls work pool {pool!r}: the run waits until one does; "
        f"start one with `prefect worker start --pool {pool}`"
    ) in done.stderr

    # Followed, the run would sit Scheduled then Late for ever: the warning comes first.
    follower = subprocess.Popen(
        [GPUFLOW, "submit", "--prompt", "x", "--image-uri", layout.seed_samples(),
         "--deployment", deployment, "--stack", stack_name, "--follow", "--poll-s", "0.3"],
        env=cli_env(state_dir, prefect_server), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follower.stdout is not None and follower.stderr is not None
    assert f"warning: no worker polls work pool {pool!r}" in follower.stderr.readline()
    assert follower.stdout.readline().startswith("Submitted run ")
    follower.stdout.readline()  # the UI link
    assert "Scheduled" in follower.stdout.readline()  # following
    follower.send_signal(signal.SIGINT)
    follower.communicate("y\n", timeout=60)  # cancel the run that no worker would take
    assert follower.returncode == 130


def test_a_dry_run_shows_the_run_it_would_create_and_creates_none(
    deployed: Deployed,
    layout: EmbeddedLayout,
    prefect_server: LocalServer,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    async def runs_of_the_deployment() -> int:
        async with get_client() as client:
            target = await client.read_deployment_by_name("generate-video/generate-video-process")
            return await client.count_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id]))
            )

    picture = tmp_path / "cat.png"
    picture.write_bytes(Path(ObjectUri.parse(layout.seed_samples()).key).read_bytes())
    before = asyncio.run(runs_of_the_deployment())
    done = _gpuflow(
        prefect_server, state_dir, tmp_path, "submit", "--dry-run", "--prompt", "a cat",
        "--image-uri", "./cat.png", "--priority", "high", "--stack", deployed.stack,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["work_pool"] == "gpuflow-process"
    assert plan["work_queue"] == "high"
    assert plan["parameters"]["stack"] == deployed.stack
    request = plan["parameters"]["request"]
    assert (request["prompt"], request["resolution"]) == ("a cat", "320x192")
    assert request["image_uri"] == f"(an upload of {picture} into the stack's object store)"
    assert "Dry run: no run was created." in done.stderr
    assert asyncio.run(runs_of_the_deployment()) == before
    # The GPU step as the stack's compute target would start it: here a local command.
    gpu_job = plan["gpu_job"]
    assert gpu_job["compute"] == "gpuflow-local-subprocess"
    assert gpu_job["argv"][0].startswith(str(layout.nas_root / "envs"))
    prompt_file = f"{layout.nas_root}/workspaces/dry-run/prompt.txt"
    assert f"--prompt-file={prompt_file}" in gpu_job["argv"]
    assert gpu_job["workspace_files"] == {prompt_file: "a cat"}
    assert f"--image={layout.nas_root}/workspaces/dry-run/inputs/cat.png" in gpu_job["argv"]
    assert not (layout.nas_root / "workspaces" / "dry-run").exists()

    # The same plan as YAML, to pipe on; a part the local target does not send is refused.
    dry_run = [
        "submit", "--dry-run", "--prompt", "a cat", "--image-uri", "./cat.png",
        "--priority", "high", "--stack", deployed.stack,
    ]  # fmt: skip
    as_yaml = _gpuflow(prefect_server, state_dir, tmp_path, *dry_run, "--output", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout) == plan
    no_manifest = _gpuflow(prefect_server, state_dir, tmp_path, *dry_run, "--output", "pytorchjob")
    assert no_manifest.returncode == 1
    assert (
        "--output pytorchjob: the stack's compute target gpuflow-local-subprocess sends no "
        "pytorchjob (its dry run shows: argv, workdir, gpus)"
    ) in no_manifest.stderr
    assert no_manifest.stdout == ""
    assert asyncio.run(runs_of_the_deployment()) == before
