"""Per-run workspaces on the NAS: ``workspaces/<flow-run-id>/inputs|outputs``."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gpuflow.core.errors import WorkspacePathError

logger = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Written into a workspace whose run failed: the janitor keeps it until ``keep_until``.
FAILURE_MARKER = ".gpuflow-failed.json"
# Runs outside Prefect (no flow-run id) get a workspace of their own under this prefix.
LOCAL_RUN_PREFIX = "local-"
# The names of workspaces gpuflow makes: a flow-run id, or a local run's.
WORKSPACE_NAME = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|local-[0-9a-f]{32})$"
)


def run_id_for(flow_run_id: str | None) -> str:
    """The workspace name of a run: its flow-run id, or a fresh local id outside Prefect."""
    return flow_run_id or f"{LOCAL_RUN_PREFIX}{uuid.uuid4().hex}"


def kept_until(workspace_root: Path) -> float | None:
    """When a failed run's workspace may go (epoch seconds); None without a readable marker."""
    try:
        record = json.loads((workspace_root / FAILURE_MARKER).read_text())
        return float(record["keep_until"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def create(cls, nas_root: Path, run_id: str) -> Workspace:
        if not _RUN_ID.match(run_id):
            raise WorkspacePathError(run_id, str(nas_root / "workspaces"))
        workspace = cls(nas_root / "workspaces" / run_id)
        workspace.inputs.mkdir(parents=True, exist_ok=True)
        workspace.outputs.mkdir(parents=True, exist_ok=True)
        return workspace

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def input_path(self, name: str) -> Path:
        """Where an input called ``name`` goes; refuses names that would land elsewhere."""
        return self._inside(self.inputs, name)

    def output_path(self, name: str) -> Path:
        return self._inside(self.outputs, name)

    def _inside(self, base: Path, name: str) -> Path:
        relative = PurePosixPath(name)
        if (
            not name
            or relative.is_absolute()
            or "\\" in name
            or "\x00" in name
            or any(part in ("", ".", "..") for part in name.split("/"))
        ):
            raise WorkspacePathError(name, str(self.root))
        path = base / relative
        if not path.resolve().is_relative_to(base.resolve()):
            raise WorkspacePathError(name, str(self.root))
        return path

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def keep_after_failure(self, keep_s: float, error: str) -> bool:
        """Leave the workspace for debugging; the janitor removes it ``keep_s`` from now.

        False when the marker could not be written (a full disk, a NAS gone): the run's
        own failure is what matters, so this never raises; without a marker the janitor
        treats the workspace as any other (removed once it is old and its run is over)."""
        now = time.time()
        record = {"failed_at": now, "keep_until": now + keep_s, "error": error[:2000]}
        staging = self.root / f".{FAILURE_MARKER}.tmp"
        try:
            staging.write_text(json.dumps(record, indent=2))
            staging.replace(self.root / FAILURE_MARKER)
        except OSError as exc:
            logger.warning("Could not mark workspace %s as failed: %s", self.root, exc)
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            return False
        return True
