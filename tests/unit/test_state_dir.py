"""Commands find the embedded default's state (and its local server) from anywhere below it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow.ops.embedded import default_state_dir


def test_the_nearest_state_directory_above_the_working_directory_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".gpuflow").mkdir()
    deeper = tmp_path / "jobs" / "i2v"
    deeper.mkdir(parents=True)
    monkeypatch.delenv("GPUFLOW_STATE_DIR", raising=False)
    monkeypatch.chdir(deeper)
    assert default_state_dir() == tmp_path.resolve() / ".gpuflow"


def test_without_one_the_working_directory_gets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPUFLOW_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_state_dir() == tmp_path.resolve() / ".gpuflow"


def test_gpuflow_state_dir_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".gpuflow").mkdir()
    monkeypatch.setenv("GPUFLOW_STATE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    assert default_state_dir() == tmp_path.resolve() / "elsewhere"
