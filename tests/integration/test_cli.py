"""The ``gpuflow`` command through its real console script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpuflow.ops.local_server import LocalServer
from tests.support.media import probe

pytestmark = pytest.mark.integration

GPUFLOW = str(Path(sys.executable).with_name("gpuflow"))


def _gpuflow(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUFLOW_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [GPUFLOW, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_demo_runs_the_main_job_and_says_where_the_video_is(
    prefect_server: LocalServer, state_dir: Path
) -> None:
    completed = _gpuflow(
        "demo", "--num-frames", "13", "--resolution", "192x128", state_dir=state_dir
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"Reusing the local Prefect server at {prefect_server.ui_url}" in completed.stdout
    path = Path(completed.stdout.split("local path: ")[1].split()[0])
    facts = probe(path)
    assert (facts.width, facts.height, facts.frames) == (192, 128, 13)


def test_demo_refuses_a_bad_value_without_a_traceback(
    prefect_server: LocalServer, state_dir: Path
) -> None:
    completed = _gpuflow("demo", "--num-frames", "12", state_dir=state_dir)
    assert completed.returncode == 1
    assert "num_frames 12 is not of the form 4n+1" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_server_status_reports_the_running_server(
    prefect_server: LocalServer, state_dir: Path
) -> None:
    completed = _gpuflow("server", "status", state_dir=state_dir)
    assert completed.returncode == 0
    # Not the fixture's pid: a crash-safety test restarts the session's server on the same port.
    reported = re.fullmatch(r"running: pid (\d+), UI (\S+), API (\S+)\n", completed.stdout)
    assert reported is not None, completed.stdout
    assert reported[2] == prefect_server.ui_url and reported[3] == prefect_server.api_url
    command_line = Path(f"/proc/{reported[1]}/cmdline").read_bytes().split(b"\0")
    assert command_line[1:4] == [b"-m", b"prefect", b"server"], command_line


def test_server_status_fails_where_none_runs(tmp_path: Path) -> None:
    completed = _gpuflow("server", "status", state_dir=tmp_path)
    assert completed.returncode == 3
    assert "no local Prefect server" in completed.stderr
