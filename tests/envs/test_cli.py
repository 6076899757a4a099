"""``gpuflow env`` through its real entry point, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GPUFLOW = Path(sys.executable).parent / "gpuflow"


def _gpuflow(nas: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUFLOW_NAS_ROOT": str(nas)}
    return subprocess.run(
        [str(GPUFLOW), "env", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_build_list_pin_and_gc_from_the_command_line(tmp_path: Path, job: Path) -> None:
    nas = tmp_path / "nas"
    built = _gpuflow(nas, "build", str(job), "--json")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["built"] is True and result["link_mode"] == "hardlink"
    assert Path(result["python"]).is_file()

    listed = _gpuflow(nas, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    envs = json.loads(listed.stdout)["envs"]
    assert [(e["key"], e["status"], e["current_of"]) for e in envs] == [
        (result["key"], "ready", "demo")
    ]

    refused = _gpuflow(nas, "pin", "demo", "feedfacefeedfacefeedface")
    assert refused.returncode == 1
    assert "feedfacefeedfacefeedface" in refused.stderr and "Traceback" not in refused.stderr

    collected = _gpuflow(
        nas, "gc", "--dry-run", "--json", "--max-idle-days", "0", "--include-current"
    )
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout) == [
        {"key": result["key"], "action": "would evict", "reason": "unused for 0.0 hours"}
    ]
    assert (nas / "envs" / result["key"] / "metadata.json").is_file()


def test_build_of_a_missing_directory_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-job"
    failed = _gpuflow(tmp_path / "nas", "build", str(missing))
    assert failed.returncode == 1
    assert f"job directory {missing} does not exist" in failed.stderr
