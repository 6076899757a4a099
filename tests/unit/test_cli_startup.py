"""The command line answers `--help` at once: it imports no backend, no Prefect, no cloud SDK.

Importing Prefect takes seconds of CPU, kubernetes_asyncio and the stack's backends more;
each belongs to the commands that use it, not to every start of `gpuflow`.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Every command's help, answered in one process, then the modules that process imported.
_HELP_ALL = """
import json, sys
from gpuflow.cli.main import app
commands = [[], ["server"], ["env"]] + [[name] for name in
    ("submit", "status", "logs", "batch", "janitor", "bootstrap", "demo", "run", "reconcile")
] + [["server", name] for name in ("start", "stop", "status")] + [
    ["env", name] for name in ("build", "list", "show", "resolve", "pin", "unpin", "gc")
]
codes = {}
for command in commands:
    try:
        app([*command, "--help"], prog_name="gpuflow")
    except SystemExit as exit:
        codes[" ".join(command)] = exit.code
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""

# Module prefixes a help screen must not import (each costs a second or more to import).
_HEAVY = ("prefect", "kubernetes_asyncio", "botocore", "boto3", "gpuflow.compute",
          "gpuflow.pipeline.stack", "gpuflow.envs.fabric", "yaml")  # fmt: skip


def _help_everywhere() -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", _HELP_ALL], capture_output=True, text=True, timeout=120, check=True
    )
    answer: dict[str, object] = json.loads(completed.stdout.splitlines()[-1])
    return answer


def test_every_help_screen_answers_without_importing_prefect_or_a_backend() -> None:
    answer = _help_everywhere()
    codes = answer["codes"]
    assert isinstance(codes, dict)
    assert set(codes.values()) == {0}, codes
    modules = answer["modules"]
    assert isinstance(modules, list)
    heavy = sorted(
        name for name in modules if any(name == p or name.startswith(f"{p}.") for p in _HEAVY)
    )
    assert heavy == [], f"`gpuflow --help` imported {heavy[:20]}"
