"""`gpuflow submit / status / logs / batch / janitor` through the real console script."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from gpuflow.ops.embedded import EmbeddedLayout
from gpuflow.ops.local_server import LocalServer
from tests.integration.test_deployments import request_fields
from tests.integration.test_janitor import PAYLOAD, _runs_in_states, _workspace
from tests.support.deployed import GPUFLOW, Deployed, cli_env
from tests.support.media import probe

pytestmark = [pytest.mark.integration, pytest.mark.suite_seconds(498)]


@pytest.fixture
def env(prefect_server: LocalServer, state_dir: Path) -> dict[str, str]:
    return cli_env(state_dir, prefect_server)


def _gpuflow(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GPUFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_submit_follow_shows_progress_and_the_output_uri(
    deployed: Deployed, layout: EmbeddedLayout, env: dict[str, str], tmp_path: Path
) -> None:
    request_file = tmp_path / "request.yaml"
    request_file.write_text(
        "prompt: zoom in slowly\n"
        f"image_uri: {layout.seed_samples()}\n"
        "resolution: 160x96\n"
        "num_frames: 5\n"
    )
    done = _gpuflow(
        env, "submit", "--file", str(request_file), "--num-frames", "13",
        "--stack", deployed.stack, "--follow", "--poll-s", "0.3",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    run_id = lines[0].split()[2]
    assert "(normal queue)" in lines[0]
    progress = [line for line in lines if line.startswith("[")]
    assert progress[-1].startswith("[" + "#" * 30 + "] 100.0% Completed"), progress
    assert any("step " in line for line in progress), progress
    output = lines[-1].removeprefix("Output: ")
    assert output.endswith(f"/{run_id}/video.mp4")
    facts = probe(Path(output.removeprefix("file://")))
    assert (facts.width, facts.height, facts.frames) == (160, 96, 13)

    status = _gpuflow(env, "status", run_id)
    assert status.returncode == 0
    assert "Completed" in status.stdout and output in status.stdout

    logs = _gpuflow(env, "logs", run_id)
    assert logs.returncode == 0
    assert f"Video ready: {output}" in logs.stdout
    assert len(_gpuflow(env, "logs", run_id, "--tail", "2").stdout.splitlines()) == 2


def test_ctrl_c_offers_to_cancel_the_run(
    deployed: Deployed, layout: EmbeddedLayout, env: dict[str, str]
) -> None:
    # The test worker does not serve the `batch` queue: the run waits there to be cancelled.
    follower = subprocess.Popen(
        [GPUFLOW, "submit", "--prompt", "pan right", "--image-uri", layout.seed_samples(),
         "--priority", "batch", "--stack", deployed.stack, "--follow", "--poll-s", "0.3"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follower.stdout is not None and follower.stdin is not None
    first = follower.stdout.readline()
    assert first.startswith("Submitted run "), first
    run_id = UUID(first.split()[2])
    follower.stdout.readline()  # the UI link
    assert follower.stdout.readline().startswith("[")  # following: a progress line
    follower.send_signal(signal.SIGINT)
    _, stderr = follower.communicate("y\n", timeout=60)
    assert follower.returncode == 130, stderr
    assert f"Cancel run {run_id}?" in stderr
    assert f"Cancelling run {run_id}." in stderr
    assert "Traceback" not in stderr

    async def state() -> StateType | None:
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            return run.state_type

    deadline = time.monotonic() + 30
    while asyncio.run(state()) not in (StateType.CANCELLING, StateType.CANCELLED):
        assert time.monotonic() < deadline, asyncio.run(state())
        time.sleep(0.5)


def test_bad_requests_and_unknown_runs_fail_with_clear_errors_and_exit_codes(
    deployed: Deployed, layout: EmbeddedLayout, env: dict[str, str]
) -> None:
    bad = _gpuflow(
        env, "submit", "--prompt", "x", "--image-uri", layout.seed_samples(), "--num-frames", "12"
    )
    assert bad.returncode == 1
    assert "num_frames 12 is not of the form 4n+1" in bad.stderr
    assert "Traceback" not in bad.stderr

    unknown = str(uuid.uuid4())
    missing = _gpuflow(env, "status", unknown)
    assert missing.returncode == 3
    assert f"no flow run {unknown}" in missing.stderr

    no_deployment = _gpuflow(
        env, "submit", "--prompt", "x", "--image-uri", layout.seed_samples(),
        "--deployment", "generate-video/nope",
    )  # fmt: skip
    assert no_deployment.returncode == 3
    assert "'generate-video/nope'" in no_deployment.stderr

    debug = _gpuflow(env, "--debug", "status", unknown)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_batch_check_lists_every_bad_line(
    layout: EmbeddedLayout, env: dict[str, str], tmp_path: Path
) -> None:
    manifest = tmp_path / "requests.jsonl"
    manifest.write_text(
        "\n".join(
            [
                json.dumps(request_fields(layout)),
                "{oops",
                json.dumps(request_fields(layout, fps=0)),
            ]
        )
    )
    checked = _gpuflow(env, "batch", str(manifest), "--check")
    assert checked.returncode == 1
    assert "line 2: not valid JSON" in checked.stderr
    assert "line 3: invalid request: fps=0" in checked.stderr
    assert "1 valid request(s), 2 invalid line(s)" in checked.stdout


def test_batch_reports_each_runs_state_changes_while_runs_are_in_flight(
    deployed: Deployed, layout: EmbeddedLayout, env: dict[str, str], tmp_path: Path
) -> None:
    manifest = tmp_path / "requests.jsonl"
    lines = [request_fields(layout, seed=seed) for seed in (31, 32)]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    done = _gpuflow(
        env, "batch", str(manifest), "--stack", deployed.stack,
        "--name", f"progress-{uuid.uuid4().hex[:6]}", "--max-in-flight", "1", "--poll-s", "0.3",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    changes = re.findall(
        r"line (\d+): (\w+) \(run [\w-]+, ([0-9a-f-]{36})\) · (\d+)/2 finished", done.stderr
    )
    # Each line's run is reported when created, then at each state the polls see, ending
    # Completed; with one run in flight, line 2 starts only once line 1 has finished.
    by_line = {line: [state for n, state, _, _ in changes if n == line] for line in ("1", "2")}
    for states in by_line.values():
        assert states[0] == "Scheduled" and states[-1] == "Completed", changes
        assert len(states) == len(set(states)), f"a state reported twice: {changes}"
    first_line_done = next(i for i, c in enumerate(changes) if c[:2] == ("1", "Completed"))
    assert changes[first_line_done][3] == "1"
    assert next(i for i, c in enumerate(changes) if c[0] == "2") > first_line_done
    assert changes[-1][1:2] == ("Completed",) and changes[-1][3] == "2"


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _would_remove(stdout: str) -> tuple[int, int]:
    """(workspaces, bytes) of the janitor's "Would remove/Removed N of M ..., 1.5 KiB freed"."""
    found = re.search(
        r"(?:Would remove|Removed) (\d+) of \d+ workspace\(s\), ([\d.]+) (B|[KMGT]iB) freed", stdout
    )
    assert found, stdout
    return int(found[1]), int(float(found[2]) * _UNITS[found[3]])


def test_janitor_dry_run_reports_a_stale_workspace_and_keeps_it(
    deployed: Deployed, layout: EmbeddedLayout, env: dict[str, str]
) -> None:
    (finished,) = asyncio.run(_runs_in_states([StateType.COMPLETED]))
    stale = _workspace(layout.nas_root, finished, age_s=48 * 3600)

    dry = _gpuflow(env, "janitor", "--stack", deployed.stack, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    removed, freed = _would_remove(dry.stdout)
    assert removed >= 1 and freed >= PAYLOAD, dry.stdout
    assert dry.stdout.startswith("Would remove"), dry.stdout
    assert "% used" in dry.stdout and "GPU limit gpu: 0/" in dry.stdout
    assert (stale / "outputs" / "raw.mp4").is_file(), "a dry run removes nothing"

    # The same pass for real removes what the dry run named.
    done = _gpuflow(env, "janitor", "--stack", deployed.stack)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("Removed"), done.stdout
    assert _would_remove(done.stdout)[0] >= 1
    assert not stale.exists()
