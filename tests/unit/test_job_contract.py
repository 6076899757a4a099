from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuflow.compute.base import JobSpec
from gpuflow.core.request import parse_request
from gpuflow.core.workspace import Workspace
from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.envs.records import BaseInterpreter
from gpuflow.pipeline.job_contract import PROMPT_FILE, job_spec
from gpuflow.storage.model_cache import CachedModel

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture(scope="module")
def i2v_arguments() -> Callable[[list[str]], argparse.Namespace]:
    # The reference job's own parser, as its console script builds it.
    sys.path.insert(0, str(JOBS / "i2v" / "src"))
    try:
        from i2v_job.__main__ import parse_arguments
    finally:
        sys.path.remove(str(JOBS / "i2v" / "src"))
    return parse_arguments


@pytest.mark.parametrize(
    "prompt",
    ["--help", "-cinematic", "-h", "--output=/etc/passwd", "--", "-", "a\n--seed 9", "="],
)
def test_no_prompt_is_read_as_an_option_by_the_job(
    tmp_path: Path, i2v_arguments: Callable[[list[str]], argparse.Namespace], prompt: str
) -> None:
    request = parse_request({"prompt": prompt, "image_uri": "file:///srv/cat.png", "seed": 7})
    workspace = Workspace.create(tmp_path, "local-" + "0" * 32)
    job = job_spec(
        request,
        JOBS / "i2v",
        ResolvedEnv(key="k", root=tmp_path / "env", built=False),
        CachedModel(path=tmp_path / "model", downloaded=False, bytes_downloaded=0),
        workspace.input_path("cat.png"),
        workspace,
        60.0,
    )
    parsed = i2v_arguments(job.argv[1:])
    assert parsed.prompt == prompt
    assert parsed.seed == 7 and parsed.output == workspace.output_path("raw.mp4")


@pytest.mark.parametrize(
    "prompt",
    [
        "晨雾中的山丘、镜头缓缓向左平移。" * 250,  # 4,000 CJK characters
        "line one\nline two\n\n  trailing spaces  \t",
        "emoji 🎬 and combining é",
    ],
)
def test_the_prompt_reaches_the_job_verbatim_through_a_workspace_file(
    tmp_path: Path, i2v_arguments: Callable[[list[str]], argparse.Namespace], prompt: str
) -> None:
    request = parse_request({"prompt": prompt, "image_uri": "file:///srv/cat.png"})
    workspace = Workspace.create(tmp_path, "local-" + "1" * 32)
    job = job_spec(
        request,
        JOBS / "i2v",
        ResolvedEnv(key="k", root=tmp_path / "env", built=False),
        CachedModel(path=tmp_path / "model", downloaded=False, bytes_downloaded=0),
        workspace.input_path("cat.png"),
        workspace,
        60.0,
    )
    prompt_file = workspace.root / PROMPT_FILE
    assert f"--prompt-file={prompt_file}" in job.argv
    assert not any(prompt in part for part in job.argv)
    assert sum(len(part) for part in job.argv) < 1000  # whatever the prompt's length
    assert prompt_file.read_bytes() == prompt.encode("utf-8")
    assert i2v_arguments(job.argv[1:]).prompt == prompt


def test_a_prompt_file_that_is_missing_or_not_utf8_is_a_config_error(
    tmp_path: Path,
    i2v_arguments: Callable[[list[str]], argparse.Namespace],
    capsys: pytest.CaptureFixture[str],
) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    required = ["--model-dir=m", "--image=i", "--width=8", "--height=8", "--frames=1"]
    required += ["--fps=1", "--seed=1", "--output=o.mp4"]
    for path, complaint in [(tmp_path / "absent.txt", "No such file"), (latin1, "not UTF-8")]:
        with pytest.raises(SystemExit) as exited:
            i2v_arguments([*required, f"--prompt-file={path}"])
        assert exited.value.code == 1  # ExitCode.CONFIG_ERROR
        assert complaint in capsys.readouterr().err


@pytest.mark.parametrize(("gpu_type", "placed_on"), [("", None), ("h100", "h100")])
def test_an_empty_gpu_type_places_the_job_anywhere(
    tmp_path: Path, gpu_type: str, placed_on: str | None
) -> None:
    # The backends read None as any type: no node selector, no ECS placement constraint.
    request = parse_request(
        {"prompt": "x", "image_uri": "file:///srv/cat.png", "gpu_type": gpu_type}
    )
    workspace = Workspace.create(tmp_path, "local-" + "1" * 32)
    job = job_spec(
        request,
        JOBS / "i2v",
        ResolvedEnv(key="k", root=tmp_path / "env", built=False),
        CachedModel(path=tmp_path / "model", downloaded=False, bytes_downloaded=0),
        workspace.input_path("cat.png"),
        workspace,
        60.0,
    )
    assert job.gpu_type == placed_on


def test_the_job_names_the_interpreter_its_env_was_built_on(tmp_path: Path) -> None:
    request = parse_request({"prompt": "zoom", "image_uri": "file:///srv/cat.png"})
    workspace = Workspace.create(tmp_path, "local-" + "2" * 32)
    env = ResolvedEnv(key="k", root=tmp_path / "env", built=False)

    def spec() -> JobSpec:
        model = CachedModel(path=tmp_path / "model", downloaded=False, bytes_downloaded=0)
        image = workspace.input_path("cat.png")
        return job_spec(request, JOBS / "i2v", env, model, image, workspace, 60.0)

    assert spec().interpreter is None  # not built: nothing to check yet (a dry run)
    (env.venv / "bin").mkdir(parents=True)
    (env.venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.11.2\n")
    (env.venv / "bin" / "python").symlink_to("/usr/bin/python3.11")
    assert spec().interpreter == BaseInterpreter(path="/usr/bin/python3.11", version="3.11.2")
