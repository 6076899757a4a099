"""The PyTorchJob lifecycle over HTTP against the test API server: the real client throughout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gpuflow_progress import Progress, encode, parse_line

from blocks.compute import JobSpec
from blocks.kubernetes import KubernetesPyTorchJob
from tests.kubernetes.api_server import KubeApiServer

pytestmark = pytest.mark.anyio


def i2v_job(nas: Path, prompt: str = "a cat surfing", gpus: int = 1) -> JobSpec:
    return JobSpec(
        name="i2v-run-1",
        argv=[str(nas / "envs" / "k1" / ".venv" / "bin" / "i2v"), "--prompt", prompt],
        workdir=nas / "workspaces" / "run-1",
        gpus=gpus,
        timeout_s=60,
    )


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)


async def _succeeds_with_progress(api: KubeApiServer, job: dict[str, Any]) -> None:
    pods = api.create_pods(job)
    api.set_condition(job, "Created")
    await asyncio.sleep(0.1)
    for pod in pods:
        api.running(pod)
    api.set_condition(job, "Running")
    master = pods[0]
    for step in range(1, 5):
        api.log(master, encode(Progress(step, 4, f"frame {step}")))
        api.log(master, f"master line {step}")
        api.log(pods[-1], f"worker line {step}")
        await asyncio.sleep(0.02)
    for pod in pods:
        api.terminate(pod, 0)
    api.set_condition(job, "Succeeded")


async def test_happy_path_streams_master_log_and_progress_and_copies_every_pod_log(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.script = _succeeds_with_progress
    lines = Lines()
    job = i2v_job(nas, gpus=2)

    result = await target.run(job, lines)

    assert result.exit_code == 0
    progress = [event for line in lines.lines if isinstance(event := parse_line(line), Progress)]
    assert [event.done for event in progress] == [1, 2, 3, 4]
    assert [line for line in lines.lines if parse_line(line) is None] == [
        f"master line {step}" for step in range(1, 5)
    ]
    (name,) = {key[1] for key in kube_api.jobs}
    master_copy = (job.workdir / "logs" / f"{name}-master-0.log").read_text().splitlines()
    worker_copy = (job.workdir / "logs" / f"{name}-worker-0.log").read_text().splitlines()
    assert master_copy == lines.lines
    assert worker_copy == [f"worker line {step}" for step in range(1, 5)]
    (create,) = kube_api.requests_to("POST", "/pytorchjobs")
    assert create.query.get("fieldValidation") == "Strict"
    assert create.body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    watches = [r for r in kube_api.requests_to("GET", "/pytorchjobs") if r.query.get("watch")]
    assert watches and all(r.query.get("resourceVersion") for r in watches)
    assert not kube_api.requests_to("DELETE", "/pytorchjobs")
