"""What `gpuflow submit --dry-run` shows of the GPU step: the PyTorchJob or the ECS requests a
run would send, from the example stacks in ``blocks/``, with nothing downloaded or built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from gpuflow.compute.kubernetes.crd import crd_schema, validate_against_crd
from gpuflow.core.request import parse_request
from gpuflow.envs.key import environment_key
from gpuflow.pipeline.stack import GpuflowStack
from gpuflow.pipeline.submission import (
    DRY_RUN_ID,
    DryRunOutput,
    SubmissionError,
    planned_job,
    render_dry_run,
)
from tests.support.crd import load_pytorchjob_crd

REPO = Path(__file__).resolve().parents[2]
# A prompt that would break a text template: it reaches the job whole, through its file.
PROMPT = 'a cat\n--seed 9 "$(id)" {{ x }}: y'


def _example(name: str) -> GpuflowStack:
    stack = GpuflowStack.model_validate(yaml.safe_load((REPO / "blocks" / name).read_text()))
    # The example's jobs live in its image; here they are this checkout's.
    return stack.model_copy(update={"jobs_root": REPO / "jobs"})


def _request(gpus: int) -> Any:
    return parse_request(
        {"prompt": PROMPT, "image_uri": "s3://my-inputs/cat.png", "gpus": gpus, "gpu_type": "h100"}
    )


def _env_python(stack: GpuflowStack) -> str:
    key = environment_key(stack.job_dir("i2v"), stack.environments.python_version)
    return f"/mnt/nas/envs/{key}/.venv/bin/"


def _with_torch(tmp_path: Path) -> Path:
    """The reference job with torch in its lock, as a distributed job has."""
    jobs = tmp_path / "jobs"
    shutil.copytree(REPO / "jobs" / "i2v", jobs / "i2v", ignore=shutil.ignore_patterns(".venv"))
    lock = jobs / "i2v" / "uv.lock"
    lock.write_text(lock.read_text() + '\n[[package]]\nname = "torch"\nversion = "2.15.0"\n')
    return jobs


def test_the_kubernetes_preview_is_a_pytorchjob_the_crd_accepts(tmp_path: Path) -> None:
    stack = _example("kubernetes.yaml").model_copy(update={"jobs_root": _with_torch(tmp_path)})
    job = planned_job(stack, _request(gpus=16))
    preview = stack.compute.preview(job)
    manifest = preview["pytorchjob"]
    validate_against_crd(manifest, crd_schema(load_pytorchjob_crd()))
    assert manifest["kind"] == "PyTorchJob"
    assert manifest["metadata"]["name"].startswith(f"i2v-{DRY_RUN_ID}-")
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 1)
    container = specs["Master"]["template"]["spec"]["containers"][0]
    words = [*container.get("command", []), *container.get("args", [])]
    assert f"--prompt-file=/mnt/nas/workspaces/{DRY_RUN_ID}/prompt.txt" in words
    assert not any(PROMPT in word for word in words)
    # 16 GPUs are two replicas of 8 processes: launched under the env's torchrun.
    assert words[:2] == [f"{_env_python(stack)}torchrun", "--no-python"], words
    assert words[2].startswith(_env_python(stack)), words
    assert f"--image=/mnt/nas/workspaces/{DRY_RUN_ID}/inputs/cat.png" in words
    assert not Path("/mnt/nas/workspaces", DRY_RUN_ID).exists()


def test_the_ecs_preview_is_the_task_definition_and_run_task_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    stack = _example("ecs.yaml")
    preview = stack.compute.preview(planned_job(stack, _request(gpus=4)))
    definition = preview["register_task_definition"]
    container = definition["containerDefinitions"][0]
    assert {"type": "GPU", "value": "4"} in container["resourceRequirements"]
    assert definition["requiresCompatibilities"] == ["EC2"]
    run = preview["run_task"]
    assert run["taskDefinition"] == definition["family"]
    command = run["overrides"]["containerOverrides"][0]["command"]
    assert f"--prompt-file=/mnt/nas/workspaces/{DRY_RUN_ID}/prompt.txt" in command
    assert any(word.startswith(_env_python(stack)) for word in command), command
    constraints = cast(list[dict[str, str]], run["placementConstraints"])
    assert [c["type"] for c in constraints] == ["memberOf"] and "h100" in constraints[0][
        "expression"
    ]


def test_the_preview_refuses_what_the_run_would_refuse() -> None:
    # The reference job has no torch: a job of many processes could not be launched.
    stack = _example("kubernetes.yaml")
    with pytest.raises(ValueError, match=r"runs 8 processes .* has no torchrun"):
        stack.compute.preview(planned_job(stack, _request(gpus=8)))


def test_a_job_without_sources_here_is_named() -> None:
    stack = _example("kubernetes.yaml")
    request = parse_request({"prompt": "x", "image_uri": "s3://b/cat.png", "job": "nosuchjob"})
    with pytest.raises(SubmissionError, match=r"job 'nosuchjob' has no project at .*nosuchjob"):
        planned_job(stack, request)


def _plan(stack: GpuflowStack, request: Any) -> dict[str, Any]:
    """The plan `gpuflow submit --dry-run` prints, with the GPU step's preview in it."""
    return {
        "deployment": "generate-video/generate-video-x (id)",
        "parameters": {"request": request.model_dump(mode="json"), "stack": "s"},
        "gpu_job": {"compute": stack.compute.get_block_type_slug(), **stack.compute.preview(
            planned_job(stack, request)
        )},
    }  # fmt: skip


def test_the_plan_prints_as_json_or_yaml_with_the_same_content(tmp_path: Path) -> None:
    stack = _example("kubernetes.yaml").model_copy(update={"jobs_root": _with_torch(tmp_path)})
    plan = _plan(stack, _request(gpus=16))
    as_json = render_dry_run(plan, DryRunOutput.JSON)
    as_yaml = render_dry_run(plan, DryRunOutput.YAML)
    assert json.loads(as_json) == yaml.safe_load(as_yaml) == plan
    assert yaml.safe_load(as_yaml)["parameters"]["request"]["prompt"] == PROMPT


def test_the_pytorchjob_alone_is_yaml_kubectl_takes(tmp_path: Path) -> None:
    stack = _example("kubernetes.yaml").model_copy(update={"jobs_root": _with_torch(tmp_path)})
    plan = _plan(stack, _request(gpus=16))
    manifest = yaml.safe_load(render_dry_run(plan, DryRunOutput.PYTORCHJOB))
    assert manifest == plan["gpu_job"]["pytorchjob"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    validate_against_crd(manifest, crd_schema(load_pytorchjob_crd()))


def test_the_ecs_requests_alone_are_the_api_inputs_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    stack = _example("ecs.yaml")
    plan = _plan(stack, _request(gpus=4))
    definition = json.loads(render_dry_run(plan, DryRunOutput.ECS_TASK_DEFINITION))
    run = json.loads(render_dry_run(plan, DryRunOutput.ECS_RUN_TASK))
    assert definition == plan["gpu_job"]["register_task_definition"]
    assert run == plan["gpu_job"]["run_task"] and run["taskDefinition"] == definition["family"]
    with pytest.raises(
        SubmissionError,
        match=r"--output pytorchjob: the stack's compute target gpuflow-ecs-task sends no "
        r"pytorchjob \(its dry run shows: register_task_definition, run_task\)",
    ):
        render_dry_run(plan, DryRunOutput.PYTORCHJOB)
