"""The job image against the real engine: it holds the flow image's interpreter at the same
path; an environment that a flow container builds on the NAS runs in a job container from
the same NAS path; an image without that interpreter fails with the interpreter check's
one line and the config-error code, not the shell's exec error.

The job's command is built as the container backends build it: ``job_spec`` from the
job contract, behind ``checked_command`` (``docker run`` arguments replace the image's
CMD, as an ECS command override does)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpuflow_progress import ExitCode, Output, parse_line

from gpuflow.compute.base import JobSpec
from gpuflow.compute.interpreter_check import checked_command
from gpuflow.core.request import parse_request
from gpuflow.core.workspace import Workspace
from gpuflow.envs.catalog import EnvCatalog, ResolvedEnv
from gpuflow.ops.samples import write_image, write_model
from gpuflow.pipeline.job_contract import RAW_OUTPUT, job_spec
from gpuflow.storage.model_cache import CachedModel
from tests.containers.conftest import FlowImage, RunningContainer, project_version
from tests.support.docker_engine import (
    REPO,
    base_image,
    build_test_image,
    ca_bundle,
    docker,
    git_revision,
    remove_tag,
)

# Cold image builds on a loaded 2-core machine take minutes each (the job image's alone
# took 6 min at a load of 10, 25 s on a quiet one).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800), pytest.mark.suite_seconds(713)]

JOB_IMAGE_NAME = "gpuflow-job"
JOB_USER = "10001:10001"
# The flow image keeps the jobs' sources here (GPUFLOW_JOBS_ROOT).
FLOW_JOBS_ROOT = "/opt/gpuflow/jobs"
# The container test's NAS: a host directory bind-mounted at the same path in every
# container, as the NAS is mounted at one path in every pod and task.
_RUN_ID = "local-" + "c" * 32


@dataclass(frozen=True)
class JobImage:
    image: str
    image_id: str
    build_seconds: float
    size_bytes: int


@dataclass(frozen=True)
class BuiltEnv:
    nas: Path
    env: ResolvedEnv
    build_seconds: float
    record: dict[str, object]


@pytest.fixture(scope="session")
def job_image(docker_cli: str) -> Iterator[JobImage]:
    built = build_test_image(
        docker_cli,
        "job.Dockerfile",
        JOB_IMAGE_NAME,
        build_args={"VERSION": project_version(), "REVISION": git_revision()},
    )
    inspected = docker(docker_cli, "image", "inspect", "--format", "{{.Size}}", built.image)
    assert inspected.returncode == 0, inspected.stderr
    size = int(inspected.stdout.strip())
    print(f"\njob image {built.image}: {size / 1e6:.0f} MB, built in {built.seconds:.1f} s")
    yield JobImage(built.image, built.image_id, built.seconds, size)
    remove_tag(docker_cli, built.image)


def _nas_mount(nas: Path) -> list[str]:
    return ["--volume", f"{nas}:{nas}"]


def _proxy_ca() -> list[str]:
    """uv in the flow container reaches the package index through the machine's proxy."""
    bundle = ca_bundle()
    if bundle is None:
        return []
    return [
        "--volume",
        f"{bundle}:/run/gpuflow-ca.pem:ro",
        "--env",
        "SSL_CERT_FILE=/run/gpuflow-ca.pem",
    ]


@pytest.fixture(scope="session")
def flow_built_env(
    docker_cli: str, flow_image: FlowImage, tmp_path_factory: pytest.TempPathFactory
) -> BuiltEnv:
    """The reference job's env, built on the NAS by ``gpuflow env build`` in a container of
    the flow image (its own user, the NAS at the same path as here)."""
    nas = tmp_path_factory.mktemp("container-nas")
    # Flow and job containers run as uid 10001, which does not own this host directory.
    nas.chmod(0o777)
    started = time.monotonic()
    built = docker(
        docker_cli,
        "run", "--rm", "--network", "host", *_nas_mount(nas), *_proxy_ca(),
        flow_image.image,
        "gpuflow", "env", "build", f"{FLOW_JOBS_ROOT}/i2v", "--nas-root", str(nas), "--json",
        timeout=900,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert built.returncode == 0, built.stdout + built.stderr
    record = json.loads(built.stdout)
    print(f"\nenv {record.get('key')} built by the flow container in {seconds:.1f} s")
    env = EnvCatalog(root=nas).resolve_job("i2v")
    return BuiltEnv(nas=nas, env=env, build_seconds=seconds, record=record)


def _reference_job(nas: Path, env: ResolvedEnv) -> JobSpec:
    """The reference job's command for a small request, its workspace and inputs on the NAS."""
    workspace = Workspace.create(nas, _RUN_ID)
    model = nas / "models" / "i2v-reference" / "v1"
    write_model(model, "i2v-reference", "v1")
    image = workspace.input_path("cat.png")
    write_image(image)
    # The flow (uid 10001 in its container) makes the workspace in production; here the
    # test does, so the job's user is let write its outputs.
    for directory in (workspace.root, workspace.inputs, workspace.outputs):
        directory.chmod(0o777)
    request = parse_request(
        {
            "prompt": "a slow pan; $(touch /tmp/evaluated) 'quoted'",
            "image_uri": "file:///samples/cat.png",
            "resolution": "128x96",
            "num_frames": 9,
            "fps": 8,
        }
    )
    # The job's project here is the one the flow image holds at FLOW_JOBS_ROOT.
    return job_spec(
        request,
        REPO / "jobs" / "i2v",
        env,
        CachedModel(path=model, downloaded=False, bytes_downloaded=0),
        image,
        workspace,
        600.0,
    )


def _run_job(
    docker_cli: str, image: str, nas: Path, job: JobSpec, where: str, checked: bool = True
) -> subprocess.CompletedProcess[str]:
    command = checked_command(job.argv, job.interpreter, where) if checked else list(job.argv)
    return docker(
        docker_cli,
        "run", "--rm", "--network", "none", *_nas_mount(nas), "--workdir", str(job.workdir),
        image, *command,
        timeout=600,
    )  # fmt: skip


def test_the_job_image_holds_the_flow_images_interpreter(
    docker_cli: str, job_image: JobImage, flow_container: RunningContainer
) -> None:
    inspected = docker(docker_cli, "image", "inspect", job_image.image)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == JOB_IMAGE_NAME
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.base.name"] == base_image()
    assert labels["io.gpuflow.python"] == "/usr/bin/python3.11"
    assert labels["io.gpuflow.python-version"] == "3.11"
    assert config["User"] == JOB_USER  # numeric, so Kubernetes' runAsNonRoot can check it
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in config["Env"]
    probe = "import os, sys; print(os.getuid(), sys.executable, '%d.%d.%d' % sys.version_info[:3])"
    ran = docker(docker_cli, "run", "--rm", job_image.image, "/usr/bin/python3.11", "-c", probe)
    assert ran.returncode == 0, ran.stderr
    uid, executable, job_version = ran.stdout.split()
    assert (uid, executable) == ("10001", "/usr/bin/python3.11")
    # The flow image's interpreter: the one the venvs of its env builds link to.
    flow_probe = (
        "import os, sys; "
        "print(os.path.realpath(sys._base_executable), '%d.%d.%d' % sys.version_info[:3])"
    )
    ran = flow_container.exec("python", "-c", flow_probe)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [labels["io.gpuflow.python"], job_version]
    default = docker(docker_cli, "run", "--rm", job_image.image)
    assert default.returncode == 0 and default.stdout.strip() == f"Python {job_version}"


def test_an_env_the_flow_container_built_runs_in_a_job_container(
    docker_cli: str, job_image: JobImage, flow_built_env: BuiltEnv
) -> None:
    nas, env = flow_built_env.nas, flow_built_env.env
    interpreter = env.interpreter()
    assert interpreter is not None
    assert interpreter.path == "/usr/bin/python3.11" and interpreter.minor == "3.11"
    job = _reference_job(nas, env)
    assert job.interpreter == interpreter
    assert job.argv[0] == str(env.venv / "bin" / "i2v-job")

    started = time.monotonic()
    ran = _run_job(docker_cli, job_image.image, nas, job, f"image {job_image.image}")
    seconds = time.monotonic() - started
    print(
        f"\nreference job in a job container: {seconds:.1f} s (its env built by the flow "
        f"container in {flow_built_env.build_seconds:.1f} s)"
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    outputs = [
        event for line in ran.stdout.splitlines() if isinstance(event := parse_line(line), Output)
    ]
    video = job.workdir / "outputs" / RAW_OUTPUT
    assert [event.path for event in outputs] == [str(video)]
    assert video.stat().st_size > 0
    assert video.read_bytes()[4:8] == b"ftyp"  # an MP4 file
    assert video.stat().st_uid == 10001  # written by the job image's user, the flow's
    assert not Path("/tmp/evaluated").exists()


def test_an_image_without_the_interpreter_fails_with_the_clear_error(
    docker_cli: str, flow_built_env: BuiltEnv
) -> None:
    nas, env = flow_built_env.nas, flow_built_env.env
    job = _reference_job(nas, env)
    plain = base_image()  # Debian without Python

    ran = _run_job(docker_cli, plain, nas, job, f"image {plain}")

    assert ran.returncode == ExitCode.CONFIG_ERROR
    assert ran.stdout == ""
    assert job.interpreter is not None
    (line,) = ran.stderr.splitlines()
    assert line == (
        f"gpuflow: image {plain} cannot run this job: its environment was built on Python "
        f"{job.interpreter.version} at /usr/bin/python3.11, but /usr/bin/python3.11 does not "
        "exist. Run the job on an image with that interpreter (the job image, "
        "docker/job.Dockerfile) or build its environment on this one."
    )
    assert "Traceback" not in ran.stderr
    # Without the check the same container fails as the runtime reports a failed exec: in
    # words that name the job's script, neither the image nor the interpreter it lacks.
    unchecked = _run_job(docker_cli, plain, nas, job, f"image {plain}", checked=False)
    print(f"\nunchecked: exit {unchecked.returncode}: {unchecked.stderr.strip()}")
    assert unchecked.returncode != 0
    assert re.search(r"no such file or directory", unchecked.stderr, re.IGNORECASE)
    assert job.argv[0] in unchecked.stderr
    assert "python3.11" not in unchecked.stderr and plain not in unchecked.stderr


def test_a_new_revision_rebuilds_from_the_layer_cache(docker_cli: str, job_image: JobImage) -> None:
    rebuilt = build_test_image(
        docker_cli,
        "job.Dockerfile",
        JOB_IMAGE_NAME,
        build_args={"VERSION": project_version(), "REVISION": "another-commit"},
    )
    try:
        print(
            f"\njob image: first build of the session {job_image.build_seconds:.1f} s, "
            f"rebuild for another revision {rebuilt.seconds:.1f} s"
        )
        # The packages' layer is the one step that does work; only the labels change.
        (install,) = re.findall(r"^(#\d+) \[\d+/\d+\] RUN apt-get update", rebuilt.output, re.M)
        assert re.search(rf"^{install} CACHED$", rebuilt.output, re.MULTILINE), rebuilt.output
        assert rebuilt.image_id != job_image.image_id
    finally:
        remove_tag(docker_cli, rebuilt.image)
