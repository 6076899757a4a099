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

# Every `env` command on a built env, in one process, then the modules that process imported.
_ENV_COMMANDS = """
import json, sys
from gpuflow.cli.main import app
job, key = sys.argv[1], sys.argv[2]
commands = [["build", job], ["list"], ["show", key], ["resolve", "demo"], ["pin", "demo", key],
            ["unpin", "demo"], ["gc", "--dry-run"]]
codes = {}
for command in commands:
    try:
        app(["env", *command], prog_name="gpuflow")
    except SystemExit as exit:
        codes[command[0]] = exit.code
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""
# Prefect alone takes over a second to import: the env commands work from the NAS without it.
_HEAVY = ("prefect", "kubernetes_asyncio", "botocore", "boto3", "gpuflow.compute",
          "gpuflow.pipeline.stack", "gpuflow.envs.fabric")  # fmt: skip


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


def test_env_commands_on_a_built_env_import_no_prefect(tmp_path: Path, job: Path) -> None:
    nas = tmp_path / "nas"
    built = _gpuflow(nas, "build", str(job), "--json")
    assert built.returncode == 0, built.stderr
    key = json.loads(built.stdout)["key"]

    env = {**os.environ, "GPUFLOW_NAS_ROOT": str(nas)}
    completed = subprocess.run(
        [sys.executable, "-c", _ENV_COMMANDS, str(job), key],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    lines = completed.stdout.splitlines()
    assert f"Ready {key}" in lines[0], "the build found the env ready"
    answer = json.loads(lines[-1])
    assert set(answer["codes"].values()) == {0}, answer["codes"]
    heavy = sorted(
        name
        for name in answer["modules"]
        if any(name == prefix or name.startswith(f"{prefix}.") for prefix in _HEAVY)
    )
    assert heavy == [], f"`gpuflow env` imported {heavy[:20]}"
