"""Content keys: stable for the same inputs, sensitive to everything that shapes the env."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from gpuflow.core.errors import EnvironmentBuildError
from gpuflow.envs.key import StatIndex, environment_key

LOCK = """version = 1
requires-python = ">=3.10"

[[package]]
name = "demo"
version = "0.1.0"
source = { editable = "." }
dependencies = [{ name = "helper" }]

[[package]]
name = "helper"
version = "0.1.0"
source = { directory = "../helper" }
"""


def _project(root: Path) -> Path:
    job = root / "demo"
    (job / "src" / "demo").mkdir(parents=True)
    (job / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0.1.0"\n')
    (job / "uv.lock").write_text(LOCK)
    (job / "src" / "demo" / "__init__.py").write_text("X = 1\n")
    helper = root / "helper"
    helper.mkdir()
    (helper / "pyproject.toml").write_text('[project]\nname = "helper"\nversion = "0.1.0"\n')
    (helper / "helper.py").write_text("Y = 1\n")
    return job


def test_key_is_stable_and_independent_of_where_the_checkout_lives(tmp_path: Path) -> None:
    job = _project(tmp_path / "a")
    key = environment_key(job, "3.11.7")
    assert key == environment_key(job, "3.11.7")
    assert len(key) == 24 and int(key, 16) >= 0
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere")
    assert environment_key(tmp_path / "elsewhere" / "demo", "3.11.7") == key
    # Build and tool droppings do not count.
    for junk in (".venv/bin/python", "src/demo/__pycache__/x.pyc", ".pytest_cache/v"):
        (job / junk).parent.mkdir(parents=True, exist_ok=True)
        (job / junk).write_text("junk")
    assert environment_key(job, "3.11.7") == key


@pytest.mark.parametrize(
    "change",
    [
        "lock",
        "pyproject",
        "source",
        "new source file",
        "path dependency",
        "python",
    ],
)
def test_key_changes_with_everything_that_shapes_the_env(tmp_path: Path, change: str) -> None:
    job = _project(tmp_path)
    before = environment_key(job, "3.11.7")
    python = "3.11.7"
    if change == "lock":
        (job / "uv.lock").write_text(
            LOCK.replace('version = "0.1.0"\nsource = { dir', 'version = "0.2.0"\nsource = { dir')
        )
    elif change == "pyproject":
        (job / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0.1.1"\n')
    elif change == "source":
        (job / "src" / "demo" / "__init__.py").write_text("X = 2\n")
    elif change == "new source file":
        (job / "src" / "demo" / "extra.py").write_text("")
    elif change == "path dependency":
        (tmp_path / "helper" / "helper.py").write_text("Y = 2\n")
    else:
        python = "3.12.1"
    assert environment_key(job, python) != before


def test_missing_lock_is_refused_naming_the_project(tmp_path: Path) -> None:
    job = _project(tmp_path)
    (job / "uv.lock").unlink()
    with pytest.raises(EnvironmentBuildError, match=f"{job} has no uv.lock"):
        environment_key(job)


def test_stat_index_trusts_only_unchanged_old_files(tmp_path: Path) -> None:
    job = _project(tmp_path)
    index = StatIndex(tmp_path / "index")
    key = index.compute(job, "3.11.7")
    assert index.lookup(job, "3.11.7") is None, "fresh files must not be trusted (racy)"

    old = time.time() - 60
    for path in [*job.rglob("*"), *(tmp_path / "helper").rglob("*")]:
        os.utime(path, (old, old))
    assert index.compute(job, "3.11.7") == key
    assert index.lookup(job, "3.11.7") == key
    assert index.lookup(job, "3.12.1") is None  # another Python is another entry

    # Same size, mtime put back: ctime still tells.
    helper = tmp_path / "helper" / "helper.py"
    helper.write_text("Y = 9\n")
    os.utime(helper, (old, old))
    assert index.lookup(job, "3.11.7") is None
    assert index.compute(job, "3.11.7") != key
