"""A dead PREFECT_API_URL gets one answer from every command: the URL, and what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

GPUFLOW = str(Path(sys.executable).with_name("gpuflow"))
RUN_ID = "6a7e4a36-1b5f-4c8e-9a39-111111111111"


def _dead_api_url() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


def test_every_api_command_names_the_dead_url_the_same_way(tmp_path: Path) -> None:
    manifest = tmp_path / "requests.jsonl"
    manifest.write_text('{"prompt": "x", "image_uri": "s3://bucket/cat.png"}\n')
    api_url = _dead_api_url()
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUFLOW_STATE_DIR": str(tmp_path)}
    commands = [
        ["status", RUN_ID],
        ["logs", RUN_ID],
        ["submit", "--prompt", "x", "--image-uri", "s3://bucket/cat.png"],
        ["janitor"],
        ["batch", str(manifest)],
    ]
    # Side by side: each command spends its seconds importing Prefect, not waiting.
    running = {
        command[0]: subprocess.Popen(
            [GPUFLOW, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for command in commands
    }
    answers = {}
    for name, process in running.items():
        _, stderr = process.communicate(timeout=120)
        answers[name] = (process.returncode, stderr.strip().splitlines()[-1])
    expected = f"error: cannot reach the Prefect API at {api_url} ("
    for name, (code, line) in answers.items():
        assert code == 3, (name, line)
        assert line.startswith(expected), (name, line)
        assert "`gpuflow server start`" in line and "PREFECT_API_URL" in line, (name, line)
