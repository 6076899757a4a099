"""The wheel a user installs: ``gpuflow`` is its only import package, so it cannot shadow a
project's own ``flows``, ``blocks`` or ``deployments``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import uv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [uv.find_uv_bin(), "build", "--wheel", "--out-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("gpuflow-*.whl")
    return built


def test_gpuflow_is_the_only_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert {name for name in top if not name.endswith(".dist-info")} == {"gpuflow"}


def test_in_a_fresh_venv_the_faces_are_not_importable(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        [uv.find_uv_bin(), "venv", "--python", sys.executable, str(venv)],
        check=True,
        capture_output=True,
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [uv.find_uv_bin(), "pip", "install", "--python", str(python), "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    # Outside the checkout, so the repository's own folders are not on sys.path.
    probe = (
        "import importlib.util, json\n"
        "names = ['gpuflow', 'flows', 'blocks', 'deployments']\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))\n"
    )
    found = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    assert found.stdout.strip() == (
        '{"gpuflow": true, "flows": false, "blocks": false, "deployments": false}'
    )
