"""The reference job through its real console script in its real uv environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gpuflow_progress import ExitCode, Output, Progress, parse_line

from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.ops import samples
from tests.support.media import frame, probe

pytestmark = pytest.mark.integration


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    samples.write_model(directory, "standin", "v1")
    return directory


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    samples.write_image(path)
    return path


def _job(
    env: ResolvedEnv, model_dir: Path, image: Path, output: Path, **overrides: str
) -> subprocess.CompletedProcess[str]:
    args = {
        "--model-dir": str(model_dir), "--image": str(image), "--prompt": "pan left",
        "--width": "128", "--height": "96", "--frames": "9", "--fps": "8", "--seed": "1",
        "--output": str(output),
    }  # fmt: skip
    args.update(overrides)
    argv = [str(env.script("i2v-job"))] + [part for pair in args.items() for part in pair]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_the_job_animates_the_image_and_reports_progress(
    i2v_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "raw.mp4"
    completed = _job(i2v_env, model_dir, image, output)
    assert completed.returncode == 0, completed.stderr
    events = [parse_line(line) for line in completed.stdout.splitlines()]
    progress = [event for event in events if isinstance(event, Progress)]
    assert [p.done for p in progress] == list(range(1, 10)) and progress[-1].percent == 100.0
    assert Output("video", str(output)) in events
    facts = probe(output)
    assert (facts.width, facts.height, facts.frames) == (128, 96, 9)
    first, last = frame(output, 0, 128, 96), frame(output, 8, 128, 96)
    assert abs(first.astype(int) - last.astype(int)).mean() > 5, "the camera did not move"
    assert list(output.parent.iterdir()) == [output], "partial files left behind"


def test_prompt_and_seed_shape_the_motion(
    i2v_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    outputs = {}
    for name, prompt, seed in [
        ("a", "pan left", "1"),
        ("b", "pan left", "1"),
        ("c", "zoom out", "9"),
    ]:
        outputs[name] = tmp_path / f"{name}.mp4"
        assert (
            _job(
                i2v_env, model_dir, image, outputs[name], **{"--prompt": prompt, "--seed": seed}
            ).returncode
            == 0
        )
    last = {name: frame(path, 8, 128, 96).astype(int) for name, path in outputs.items()}
    assert (last["a"] == last["b"]).all()
    assert abs(last["a"] - last["c"]).mean() > 5


def test_an_unreadable_image_is_an_input_error(
    i2v_env: ResolvedEnv, model_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    completed = _job(i2v_env, model_dir, bad, tmp_path / "out.mp4")
    assert completed.returncode == ExitCode.INPUT_ERROR
    assert str(bad) in completed.stderr
    missing = _job(i2v_env, model_dir, tmp_path / "missing.png", tmp_path / "out.mp4")
    assert missing.returncode == ExitCode.INPUT_ERROR and "missing.png" in missing.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_a_missing_or_foreign_model_is_a_config_error(
    i2v_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    completed = _job(i2v_env, tmp_path / "nowhere", image, tmp_path / "out.mp4")
    assert completed.returncode == ExitCode.CONFIG_ERROR and "config.json" in completed.stderr
    (model_dir / "config.json").write_text('{"architecture": "llama", "format_version": 1}')
    completed = _job(i2v_env, model_dir, image, tmp_path / "out.mp4")
    assert completed.returncode == ExitCode.CONFIG_ERROR and "'llama'" in completed.stderr


def test_bad_arguments_are_a_config_error(
    i2v_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    completed = _job(i2v_env, model_dir, image, tmp_path / "o.mp4", **{"--frames": "-3"})
    assert completed.returncode == ExitCode.CONFIG_ERROR and "-3" in completed.stderr


def test_two_ranks_share_one_output_path_and_rank_zero_alone_writes_and_reports(
    i2v_env: ResolvedEnv, model_dir: Path, image: Path, tmp_path: Path
) -> None:
    # torch is too heavy for the reference env (PyPI's Linux wheels pull CUDA): the two
    # processes get the variables torchrun gives its children, as torchrun would.
    output = tmp_path / "out" / "raw.mp4"
    args = {
        "--model-dir": str(model_dir), "--image": str(image), "--prompt": "pan left",
        "--width": "128", "--height": "96", "--frames": "9", "--fps": "8", "--seed": "1",
        "--output": str(output),
    }  # fmt: skip
    argv = [str(i2v_env.script("i2v-job"))] + [part for pair in args.items() for part in pair]
    ranks = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                "PATH": "/usr/bin:/bin",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500",
            },
        )
        for rank in (0, 1)
    ]
    results = [process.communicate(timeout=120) for process in ranks]

    assert [process.returncode for process in ranks] == [0, 0], [err for _, err in results]
    events = [[parse_line(line) for line in out.splitlines()] for out, _ in results]
    assert [e.done for e in events[0] if isinstance(e, Progress)] == list(range(1, 10))
    assert Output("video", str(output)) in events[0]
    assert not [e for e in events[1] if e is not None], "rank 1 reported events"
    assert f"rank 1: inputs checked; rank 0 writes {output}" in results[1][0]
    assert probe(output).frames == 9
    assert list(output.parent.iterdir()) == [output]


def test_every_rank_refuses_a_bad_image_alike(
    i2v_env: ResolvedEnv, model_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.png"
    argv = [
        str(i2v_env.script("i2v-job")),
        "--model-dir", str(model_dir), "--image", str(missing), "--prompt", "p",
        "--width", "8", "--height", "8", "--frames", "1", "--fps", "1", "--seed", "1",
        "--output", str(tmp_path / "raw.mp4"),
    ]  # fmt: skip
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "RANK": "1", "WORLD_SIZE": "2"},
    )
    assert completed.returncode == ExitCode.INPUT_ERROR
    assert str(missing) in completed.stderr
