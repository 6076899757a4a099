"""The flow image's build, without an engine: the deploy steps' naming from the
environment, the BuildKit argv, the Dockerfile's pins, the docker pool's template."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from prefect.utilities.templating import apply_values
from prefect_docker.worker import DockerWorkerJobConfiguration

from gpuflow.compute.docker_pool import ALL_GPUS
from gpuflow.ops import deploy_steps
from gpuflow.ops.images import ImageBuildError, build_command, image_reference
from gpuflow.ops.work_pools import base_job_template

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_image_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GPUFLOW_IMAGE", "GPUFLOW_IMAGE_REGISTRY", "GPUFLOW_IMAGE_TAG"):
        monkeypatch.delenv(name, raising=False)


def test_the_image_name_is_the_registry_repository_when_one_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert deploy_steps.image_name_for("gpuflow") == "gpuflow"
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/gpuflow"
    monkeypatch.setenv("GPUFLOW_IMAGE_REGISTRY", ecr + "/")
    assert deploy_steps.image_name_for("gpuflow") == ecr


def test_a_registry_with_a_scheme_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLOW_IMAGE_REGISTRY", "https://ghcr.io/acme/gpuflow")
    with pytest.raises(ImageBuildError, match=r"https://ghcr.io/acme/gpuflow"):
        deploy_steps.build_flow_image()


def test_a_prebuilt_image_is_deployed_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLOW_IMAGE", "127.0.0.1:5000/team/gpuflow:ci-42")
    outputs = deploy_steps.build_flow_image()
    assert outputs["image"] == "127.0.0.1:5000/team/gpuflow:ci-42"
    assert (outputs["image_name"], outputs["tag"]) == ("127.0.0.1:5000/team/gpuflow", "ci-42")
    # Nothing to push for it, even with a registry set.
    monkeypatch.setenv("GPUFLOW_IMAGE_REGISTRY", "127.0.0.1:5000/team/gpuflow")
    pushed = deploy_steps.push_flow_image(outputs["image_name"], outputs["tag"])
    assert pushed["image"] == outputs["image"]


@pytest.mark.parametrize("image", ["127.0.0.1:5000/gpuflow", "gpuflow"])
def test_a_prebuilt_image_without_a_tag_is_refused(
    monkeypatch: pytest.MonkeyPatch, image: str
) -> None:
    monkeypatch.setenv("GPUFLOW_IMAGE", image)
    with pytest.raises(ImageBuildError, match=re.escape(repr(image))):
        deploy_steps.build_flow_image()


@pytest.mark.parametrize(
    ("name", "tag", "complaint"),
    [
        ("GPUflow", "1", "lower case"),
        ("gpu flow", "1", "invalid image name"),
        ("gpuflow:1", "2", "already has a tag"),
        ("gpuflow", "-x", "cannot start"),
        ("gpuflow", "a/b", "invalid image tag"),
    ],
)
def test_bad_image_names_and_tags_are_refused_naming_them(
    name: str, tag: str, complaint: str
) -> None:
    with pytest.raises(ImageBuildError, match=complaint):
        image_reference(name, tag)


def test_without_a_registry_push_does_nothing() -> None:
    assert deploy_steps.push_flow_image("gpuflow", "0.1.0")["image"] == "gpuflow:0.1.0"


def test_the_build_command_passes_the_ca_as_a_secret_and_arguments_as_data(
    tmp_path: Path,
) -> None:
    command = build_command(
        "/usr/bin/docker",
        context=tmp_path,
        dockerfile=tmp_path / "flow.Dockerfile",
        image="gpuflow:1",
        iidfile=tmp_path / "iid",
        build_args={"REVISION": "abc; rm -rf /"},
        ca_bundle=Path("/etc/ssl/certs/ca-certificates.crt"),
    )
    assert command[:2] == ["/usr/bin/docker", "build"]
    assert "--secret" in command
    assert command[command.index("--secret") + 1] == (
        "id=ca,src=/etc/ssl/certs/ca-certificates.crt"
    )
    assert command[command.index("--build-arg") + 1] == "REVISION=abc; rm -rf /"
    assert command[-1] == str(tmp_path)


def test_the_dockerfile_installs_the_uv_that_uv_lock_pins() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    [locked] = [package["version"] for package in lock["package"] if package["name"] == "uv"]
    dockerfile = (REPO / "docker" / "flow.Dockerfile").read_text()
    assert f"ARG UV_VERSION={locked}\n" in dockerfile


def test_the_docker_pool_mounts_the_nas_at_its_path_and_asks_for_the_gpus() -> None:
    template = base_job_template("docker")
    properties = template["variables"]["properties"]
    assert properties["nas_mount_path"]["default"] == (
        "{{ prefect.variables.gpuflow_nas_mount_path }}"
    )
    assert properties["gpu_device_requests"]["default"] == ALL_GPUS
    assert properties["network_mode"]["default"] == "host"
    kwargs = template["job_configuration"]["container_create_kwargs"]
    assert kwargs["mounts"] == [
        {
            "Type": "bind",
            "Source": "{{ nas_mount_path }}",
            "Target": "{{ nas_mount_path }}",
            "ReadOnly": False,
        }
    ]
    # What the worker's configuration becomes for given values, by Prefect's templating
    # (the integration test runs the worker itself).
    values = {"image": "gpuflow:1", "nas_mount_path": "/mnt/nas", "container_user": "0:0"}
    defaults = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    rendered = apply_values(template["job_configuration"], {**defaults, **values})
    configuration = DockerWorkerJobConfiguration.model_validate(rendered)
    kwargs = configuration.container_create_kwargs or {}
    assert kwargs["mounts"][0]["Source"] == kwargs["mounts"][0]["Target"] == "/mnt/nas"
    assert kwargs["device_requests"] == ALL_GPUS
    assert kwargs["user"] == "0:0"
    assert configuration.network_mode == "host"
    assert configuration.auto_remove is True
