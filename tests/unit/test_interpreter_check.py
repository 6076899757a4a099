"""The interpreter check before a job: the command it builds, what it does in a real shell
(dash as /bin/sh, and bash), and how its failure classes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
from gpuflow_progress import ExitCode
from prefect_aws import AwsCredentials

from gpuflow.compute.base import JobSpec
from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.interpreter_check import SCRIPT, SCRIPT_NAME, SHELL, checked_command
from gpuflow.compute.kubernetes.manifest import PyTorchJobConfig, build_pytorchjob
from gpuflow.compute.local import LocalSubprocess
from gpuflow.core.errors import JobFailedError
from gpuflow.envs.catalog import ResolvedEnv
from gpuflow.envs.records import BaseInterpreter

# Shell syntax, quotes and an option-looking word: each must reach the job as one verbatim
# element and the shell must never evaluate any of them.
HOSTILE = ["--help", 'it\'s "quoted"', "$(touch {marker})", "`touch {marker}`", "a\nb", "*"]
SHELLS = [SHELL, "/bin/bash"]


def _this_python() -> BaseInterpreter:
    version = ".".join(map(str, sys.version_info[:3]))
    return BaseInterpreter(path=sys.executable, version=version)


def _run(command: list[str], shell: str) -> subprocess.CompletedProcess[str]:
    assert command[0] == SHELL
    return subprocess.run([shell, *command[1:]], capture_output=True, text=True, timeout=30)


def _fake_python(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_without_an_interpreter_the_command_is_unchanged() -> None:
    assert checked_command(["python", "-m", "x"], None, "image i") == ["python", "-m", "x"]


def test_values_travel_as_positional_parameters_never_in_the_script() -> None:
    interpreter = BaseInterpreter(path="/usr/bin/python3.11", version="3.11.2")
    argv = ["/nas/envs/k/.venv/bin/i2v-job", "--prompt-file=/nas/w/prompt.txt"]
    command = checked_command(argv, interpreter, "image reg.example/gpuflow-job:1 $(id)")
    assert command == [
        SHELL,
        "-c",
        SCRIPT,
        SCRIPT_NAME,
        "image reg.example/gpuflow-job:1 $(id)",
        "/usr/bin/python3.11",
        "3.11",
        "3.11.2",
        *argv,
    ]
    # The script is one constant whatever the job: nothing of it comes from a value.
    assert checked_command(["other"], _this_python(), "host h")[2] is SCRIPT
    assert f"exit {int(ExitCode.CONFIG_ERROR)}" in SCRIPT


@pytest.mark.parametrize("shell", SHELLS)
def test_a_matching_interpreter_runs_the_job_verbatim(tmp_path: Path, shell: str) -> None:
    marker = tmp_path / "evaluated"
    words = [word.format(marker=marker) for word in HOSTILE]
    program = "import sys; print(repr(sys.argv[1:])); sys.exit(3)"
    command = checked_command([sys.executable, "-c", program, *words], _this_python(), "host h")
    run = _run(command, shell)
    assert run.returncode == 3, run.stderr  # the job's own exit code, passed through
    assert run.stdout.strip() == repr(words)
    assert run.stderr == ""
    assert not marker.exists()


def _missing(directory: Path) -> Path:
    return directory / "python3.11"


def _plain_file(directory: Path) -> Path:
    (directory / "python3.11").write_text("")
    return directory / "python3.11"


def _other_version(directory: Path) -> Path:
    return _fake_python(directory / "python3.11", "echo 3.12.1")


def _broken(directory: Path) -> Path:
    body = "echo 'error while loading libpython3.11.so.1.0'; echo second line; exit 127"
    return _fake_python(directory / "python3.11", body)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("make", "found"),
    [
        (_missing, "{path} does not exist"),
        (lambda directory: directory, "{path} is not an executable file"),
        (_plain_file, "{path} is not an executable file"),
        (_other_version, "{path} is Python 3.12.1"),
        (_broken, "{path} does not start: error while loading libpython3.11.so.1.0"),
    ],
    ids=["missing", "directory", "not-executable", "other-version", "broken"],
)
def test_a_mismatch_is_one_line_naming_the_image_and_both_sides(
    tmp_path: Path, shell: str, make: Callable[[Path], Path], found: str
) -> None:
    marker = tmp_path / "evaluated"
    probe = tmp_path / "probe"
    probe.mkdir()
    path = make(probe)
    interpreter = BaseInterpreter(path=str(path), version="3.11.2")
    where = f"image gpuflow-job:0.1.0 $(touch {marker})"
    run = _run(checked_command(["/bin/echo", "the job ran"], interpreter, where), shell)
    assert run.returncode == ExitCode.CONFIG_ERROR
    assert run.stdout == ""  # the job never started
    (line,) = run.stderr.splitlines()
    assert line == (
        f"gpuflow: {where} cannot run this job: its environment was built on Python 3.11.2 "
        f"at {path}, but {found.format(path=path)}. Run the job on an image with that "
        "interpreter (the job image, docker/job.Dockerfile) or build its environment on this one."
    )
    assert not marker.exists()


def test_the_failure_classes_as_a_config_error_that_is_not_retried() -> None:
    error = JobFailedError(ExitCode.CONFIG_ERROR, "gpuflow: image x cannot run this job")
    assert error.exit_class is ExitCode.CONFIG_ERROR
    assert not error.retryable
    assert "(config error)" in str(error)


def test_the_local_target_checks_the_host(tmp_path: Path) -> None:
    missing = BaseInterpreter(path=str(tmp_path / "python3.11"), version="3.11.2")
    job = JobSpec(
        name="i2v",
        argv=["/bin/echo", "the job ran"],
        workdir=tmp_path,
        gpus=0,
        interpreter=missing,
    )
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    target = LocalSubprocess(lock_dir=tmp_path / "locks", devices=[])
    result = asyncio.run(target.run(job, on_line))
    assert result.exit_code == ExitCode.CONFIG_ERROR
    assert lines == list(result.last_lines) and len(lines) == 1
    assert lines[0].startswith("gpuflow: host ")
    assert (
        f"built on Python 3.11.2 at {missing.path}, but {missing.path} does not exist" in lines[0]
    )
    ok = job.model_copy(update={"interpreter": _this_python()})
    lines.clear()
    assert asyncio.run(target.run(ok, on_line)).exit_code == 0
    assert lines == ["the job ran"]


def test_an_env_names_the_interpreter_its_venv_links_to(tmp_path: Path) -> None:
    env = ResolvedEnv(key="k", root=tmp_path / "env", built=False)
    assert env.interpreter() is None  # not built (a dry run's preview): nothing to check
    (env.venv / "bin").mkdir(parents=True)
    (env.venv / "pyvenv.cfg").write_text(
        "home = /usr/bin\nimplementation = CPython\nversion_info = 3.11.2\n"
    )
    (env.venv / "bin" / "python").symlink_to("/usr/bin/python3.11")
    interpreter = env.interpreter()
    assert interpreter == BaseInterpreter(path="/usr/bin/python3.11", version="3.11.2")
    assert interpreter is not None and interpreter.minor == "3.11"


def test_a_relative_venv_link_is_named_by_its_absolute_path(tmp_path: Path) -> None:
    env = ResolvedEnv(key="k", root=tmp_path / "env", built=False)
    (env.venv / "bin").mkdir(parents=True)
    (env.venv / "pyvenv.cfg").write_text("version_info = 3.13.1\n")
    shutil.copy(sys.executable, env.venv / "bin" / "python3.13")
    (env.venv / "bin" / "python").symlink_to("python3.13")
    assert env.interpreter() == BaseInterpreter(
        path=str(env.venv / "bin" / "python3.13"), version="3.13.1"
    )


def _env_job(**changes: object) -> JobSpec:
    job = JobSpec(
        name="i2v-run",
        argv=["/mnt/nas/envs/k/.venv/bin/i2v-job", "--prompt-file=/mnt/nas/workspaces/r/p.txt"],
        workdir=Path("/mnt/nas/workspaces/r"),
        gpus=1,
        interpreter=BaseInterpreter(path="/usr/bin/python3.11", version="3.11.2"),
    )
    return job.model_copy(update=changes)


def _ecs(**fields: object) -> EcsTask:
    settings: dict[str, object] = {
        "aws_credentials": AwsCredentials(region_name="us-east-1"),
        "cluster": "gpuflow",
        "launch_type": "EC2",
        "subnets": ["subnet-0123456789abcdef0"],
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpuflow:job-0.1.0",
        **fields,
    }
    return EcsTask.model_validate(settings)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({}, "image 123456789012.dkr.ecr.us-east-1.amazonaws.com/gpuflow:job-0.1.0"),
        (
            {"image": None, "task_definition_arn": "arn:aws:ecs:us-east-1:1:task-definition/j:3"},
            "the image of task definition arn:aws:ecs:us-east-1:1:task-definition/j:3",
        ),
    ],
)
def test_an_ecs_task_starts_the_check_then_env_c_then_the_job(
    fields: dict[str, object], where: str
) -> None:
    job = _env_job()
    request = _ecs(**fields).run_task_request(job, "gpuflow-job-1gpu", None, "t").to_api()
    (override,) = request["overrides"]["containerOverrides"]
    assert override["command"] == [
        SHELL,
        "-c",
        SCRIPT,
        SCRIPT_NAME,
        where,
        "/usr/bin/python3.11",
        "3.11",
        "3.11.2",
        "env",
        "-C",
        str(job.workdir),
        "--",
        *job.argv,
    ]
    # The check costs part of RunTask's 8,192 characters of overrides, once per job.
    assert len(json.dumps(request["overrides"], separators=(",", ":"))) < 2000


def test_a_kubernetes_job_starts_the_check_then_torchrun_then_the_job() -> None:
    config = PyTorchJobConfig(
        image="registry.example/gpuflow-job:0.1.0",
        nas_mount_path=PurePosixPath("/mnt/nas"),
        gpus_per_replica=2,
    )
    job = _env_job(gpus=4, torchrun="/mnt/nas/envs/k/.venv/bin/torchrun")
    manifest = build_pytorchjob(config, job, name="i2v-run-abc123")
    for replica in manifest["spec"]["pytorchReplicaSpecs"].values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["command"] == [
            SHELL,
            "-c",
            SCRIPT,
            SCRIPT_NAME,
            "image registry.example/gpuflow-job:0.1.0",
            "/usr/bin/python3.11",
            "3.11",
            "3.11.2",
            "/mnt/nas/envs/k/.venv/bin/torchrun",
            "--no-python",
            *job.argv,
        ]
