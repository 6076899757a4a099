from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow.core.errors import WorkspacePathError
from gpuflow.core.workspace import Workspace
from tests.support.full_disk import fill, full_filesystem


def test_workspace_layout(tmp_path: Path) -> None:
    workspace = Workspace.create(tmp_path, "0b5c-run")
    assert workspace.inputs == tmp_path / "workspaces" / "0b5c-run" / "inputs"
    assert workspace.inputs.is_dir() and workspace.outputs.is_dir()
    assert workspace.input_path("cat.png") == workspace.inputs / "cat.png"
    workspace.remove()
    assert not workspace.root.exists()


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/etc/passwd", "a/../../b", "", ".", "..", "a//b", "a\\..\\b", "x\x00y"],
)
def test_names_that_would_escape_are_refused(tmp_path: Path, name: str) -> None:
    workspace = Workspace.create(tmp_path, "run")
    with pytest.raises(WorkspacePathError) as error:
        workspace.input_path(name)
    assert repr(name) in str(error.value)


def test_a_symlink_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    workspace = Workspace.create(tmp_path, "run")
    (workspace.inputs / "link").symlink_to(tmp_path)
    with pytest.raises(WorkspacePathError):
        workspace.input_path("link/escaped.png")


@pytest.mark.parametrize("run_id", ["../x", "a/b", ""])
def test_run_ids_cannot_place_a_workspace_elsewhere(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(WorkspacePathError):
        Workspace.create(tmp_path, run_id)


def test_a_full_disk_never_hides_the_run_failure_behind_the_marker(tmp_path: Path) -> None:
    with full_filesystem(tmp_path / "nas") as nas:
        workspace = Workspace.create(nas, "local-" + "1" * 32)
        fill(nas)
        assert workspace.keep_after_failure(3600, "JobFailedError: exit code 4") is False
        assert sorted(path.name for path in workspace.root.iterdir()) == ["inputs", "outputs"]
