"""The PyTorchJob lifecycle over HTTP against the test API server: the real client throughout."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from gpuflow_progress import ExitCode, Progress, encode, parse_line
from pydantic import SecretStr

from gpuflow.compute.base import JobSpec
from gpuflow.compute.kubernetes.manifest import KubernetesConfigError
from gpuflow.compute.kubernetes.pool import FLOW_POD_RULES
from gpuflow.compute.kubernetes.status import JobStartError
from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob
from gpuflow.core.errors import JobFailedError
from gpuflow.envs.records import BaseInterpreter
from tests.support.kube_api_server import KubeApiServer, RecordedRequest, run_containers_locally

pytestmark = pytest.mark.anyio


def i2v_job(nas: Path, prompt: str = "a cat surfing", gpus: int = 1) -> JobSpec:
    return JobSpec(
        name="i2v-run-1",
        argv=[str(nas / "envs" / "k1" / ".venv" / "bin" / "i2v"), "--prompt", prompt],
        torchrun=str(nas / "envs" / "k1" / ".venv" / "bin" / "torchrun"),
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
    # The operator's deadline counts from creation: the job's timeout plus the pending wait.
    assert create.body["spec"]["runPolicy"]["activeDeadlineSeconds"] == 60 + 5 + 1
    # Pods still running when the job ends (a failed job's Workers) free their GPUs.
    assert create.body["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    watches = [r for r in kube_api.requests_to("GET", "/pytorchjobs") if r.query.get("watch")]
    assert watches and all(r.query.get("resourceVersion") for r in watches)
    assert not kube_api.requests_to("DELETE", "/pytorchjobs")


def _target(target: KubernetesPyTorchJob, **changes: Any) -> KubernetesPyTorchJob:
    return target.model_copy(update=changes)


def _foreground_deletes(api: KubeApiServer) -> list[str]:
    deletes = api.requests_to("DELETE", "/pytorchjobs/")
    return [
        r.query.get("propagationPolicy") or (r.body or {}).get("propagationPolicy", "")
        for r in deletes
    ]


def _stuck(make_stuck: Any, clear_after_s: float | None = None) -> Any:
    """A script whose pods get stuck before running (and optionally recover)."""

    async def script(api: KubeApiServer, job: dict[str, Any]) -> None:
        pods = api.create_pods(job)
        api.set_condition(job, "Created")
        for pod in pods:
            make_stuck(api, pod)
        if clear_after_s is None:
            return
        await asyncio.sleep(clear_after_s)
        for pod in pods:
            api.running(pod)
        api.set_condition(job, "Running")
        api.log(pods[0], "started after all")
        for pod in pods:
            api.terminate(pod, 0)
        api.set_condition(job, "Succeeded")

    return script


async def test_unschedulable_job_fails_at_the_pending_deadline_with_the_schedulers_message(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    kube_api.script = _stuck(lambda api, pod: api.unschedulable(pod, message))
    slow = _target(target, pending_deadline_s=0.6)
    started = asyncio.get_running_loop().time()

    with pytest.raises(JobStartError) as caught:
        await slow.run(i2v_job(nas), Lines())

    assert asyncio.get_running_loop().time() - started >= 0.6
    assert "did not start running within" in str(caught.value)
    assert message in str(caught.value)
    assert "FailedScheduling" in str(caught.value)  # the pod's warning events come along
    assert caught.value.retryable
    assert _foreground_deletes(kube_api) == ["Foreground"]
    await kube_api.garbage_collected()  # Foreground: the job goes once its pods are gone
    assert not kube_api.jobs


async def test_failing_image_pull_gets_a_grace_period_then_fails_retryably(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    message = "Back-off pulling image: dial tcp 10.0.0.5:443: i/o timeout"
    kube_api.script = _stuck(lambda api, pod: api.waiting(pod, "ImagePullBackOff", message))
    # The grace (0.3 s) ends it, not the pending deadline: set that far off, so the upper
    # bound below, which is the behaviour, holds on a loaded machine.
    graced = _target(target, pending_deadline_s=60.0)
    started = asyncio.get_running_loop().time()

    with pytest.raises(JobStartError) as caught:
        await graced.run(i2v_job(nas), Lines())

    elapsed = asyncio.get_running_loop().time() - started
    assert graced.image_pull_grace_s <= elapsed < 30
    assert "image pull failing" in str(caught.value) and message in str(caught.value)
    assert caught.value.retryable
    assert _foreground_deletes(kube_api) == ["Foreground"]


async def test_registry_throttling_waits_past_the_pull_grace_and_the_job_then_runs(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    throttled = "429 Too Many Requests: toomanyrequests: You have reached your pull rate limit"
    kube_api.script = _stuck(
        lambda api, pod: api.waiting(pod, "ErrImagePull", throttled),
        clear_after_s=target.image_pull_grace_s * 3,
    )
    lines = Lines()

    result = await target.run(i2v_job(nas), lines)

    assert result.exit_code == 0
    assert lines.lines == ["started after all"]
    assert not kube_api.requests_to("DELETE", "/pytorchjobs/")


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        ("InvalidImageName", 'couldn\'t parse image name "Bad Image"', "invalid image"),
        (
            "ErrImagePull",
            "rpc error: manifest unknown: manifest unknown",
            "image not found or access denied",
        ),
        (
            "CreateContainerConfigError",
            'secret "hf-token" not found',
            "container cannot be created",
        ),
        ("CreateContainerError", "failed to mount /dev/shm", "container cannot be created"),
    ],
)
async def test_problems_that_never_clear_fail_at_once_and_are_not_retried(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    reason: str,
    message: str,
    expected: str,
) -> None:
    def stuck(api: KubeApiServer, pod: str) -> None:
        api.waiting(pod, reason, message)
        api.add_event(pod, "Failed", f"Error: {message}")

    kube_api.script = _stuck(stuck)
    patient = _target(target, image_pull_grace_s=30.0, pending_deadline_s=30.0)
    started = asyncio.get_running_loop().time()

    with pytest.raises(JobStartError) as caught:
        await patient.run(i2v_job(nas), Lines())

    # The bound is the behaviour: a permanent image error fails now, not after the 30 s
    # grace; 15 s keeps a loaded machine well inside the difference.
    assert asyncio.get_running_loop().time() - started < 15
    assert expected in str(caught.value) and message in str(caught.value)
    assert f"event Failed: Error: {message}" in str(caught.value)
    assert not caught.value.retryable
    assert _foreground_deletes(kube_api) == ["Foreground"]


async def _log_followed(api: KubeApiServer, pod: str) -> None:
    """Until the client reads ``pod``'s log: a job that runs long enough to be followed."""
    async with asyncio.timeout(10):
        await api.request_made("GET", f"/pods/{pod}/log")


def _ends_with(master_exit: tuple[int, str], worker_exit: tuple[int, str] | None = None) -> Any:
    async def script(api: KubeApiServer, job: dict[str, Any]) -> None:
        pods = api.create_pods(job)
        for pod in pods:
            api.running(pod)
        api.set_condition(job, "Running")
        api.log(pods[0], "working")
        await _log_followed(api, pods[0])
        await asyncio.sleep(0.05)
        api.terminate(pods[0], *master_exit)
        if worker_exit is not None:
            api.terminate(pods[1], *worker_exit)
        failed = master_exit[0] != 0 or (worker_exit is not None and worker_exit[0] != 0)
        api.set_condition(job, "Failed" if failed else "Succeeded")

    return script


@pytest.mark.parametrize(
    ("master_exit", "worker_exit", "expected"),
    [
        ((2, "Error"), None, 2),  # input error: the job's own class
        ((3, "Error"), (0, "Completed"), 3),
        ((137, "OOMKilled"), None, 4),  # out of memory: resource error
        ((143, "Error"), None, 4),  # terminated from outside (preemption)
        ((127, "Error"), None, 5),  # interpreter not found: environment error
        ((0, "Completed"), (4, "Error"), 4),  # a worker's failure when the Master is fine
        ((139, "Error"), None, 139),  # unknown stays unknown (retried as infrastructure)
    ],
)
async def test_exit_codes_map_to_the_design_classes(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    master_exit: tuple[int, str],
    worker_exit: tuple[int, str] | None,
    expected: int,
) -> None:
    kube_api.script = _ends_with(master_exit, worker_exit)

    result = await target.run(i2v_job(nas, gpus=2), Lines())

    assert result.exit_code == expected
    assert "working" in result.last_lines
    assert not kube_api.requests_to("DELETE", "/pytorchjobs/")


@pytest.mark.parametrize(
    "operator_deletes_failed_pods",
    [True, False],
    ids=["operator-before-1.9.4", "operator-1.9.4-or-later"],
)
async def test_a_config_error_keeps_its_class_when_the_operator_deletes_the_failed_pods(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    operator_deletes_failed_pods: bool,
) -> None:
    kube_api.operator_deletes_failed_pods = operator_deletes_failed_pods
    pods_when_failed: list[int] = []

    async def fails_at_once(api: KubeApiServer, job: dict[str, Any]) -> None:
        # The Master dies of a config error within moments: no log was ever followed.
        pods = api.create_pods(job)
        for pod in pods:
            api.running(pod)
        api.set_condition(job, "Running")
        api.terminate(pods[0], 1)
        api.set_condition(job, "Failed", "PyTorchJobFailed", "Master replica failed")
        pods_when_failed.append(len(api.pods))

    kube_api.script = fails_at_once

    result = await target.run(i2v_job(nas, gpus=2), Lines())

    assert result.exit_code == 1  # a config error: not retried as if out of memory
    assert any("master-0 exited 1 Error" in line for line in result.last_lines)
    assert pods_when_failed == [0 if operator_deletes_failed_pods else 2]
    # A log read that found the pod gone is no log line.
    assert not any("NotFound" in line for line in result.last_lines), result.last_lines


async def test_job_failed_without_any_container_exit_is_a_resource_error(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    async def deadline_exceeded(api: KubeApiServer, job: dict[str, Any]) -> None:
        api.set_condition(job, "Created")
        await asyncio.sleep(0.05)
        api.set_condition(job, "Failed", "DeadlineExceeded", "Job was active longer than allowed")

    kube_api.script = deadline_exceeded

    result = await target.run(i2v_job(nas), Lines())

    assert result.exit_code == 4
    assert "DeadlineExceeded" in result.last_lines[-1]


async def _runs_until_deleted(api: KubeApiServer, job: dict[str, Any]) -> None:
    pods = api.create_pods(job)
    for pod in pods:
        api.running(pod)
    api.set_condition(job, "Running")
    for step in range(1000):
        if (job["metadata"]["namespace"], job["metadata"]["name"]) not in api.jobs:
            return
        api.log(pods[0], f"step {step}")
        await asyncio.sleep(0.02)


async def test_cancelling_the_run_deletes_the_job_in_the_foreground(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.script = _runs_until_deleted
    lines = Lines()
    run = asyncio.create_task(target.run(i2v_job(nas), lines))
    # The job is running once its lines arrive; a minute without them means never.
    deadline = asyncio.get_running_loop().time() + 60
    while len(lines.lines) < 3:
        assert not run.done(), "the run ended before it was cancelled"
        assert asyncio.get_running_loop().time() < deadline, "the job's lines never came"
        await asyncio.sleep(0.02)

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert _foreground_deletes(kube_api) == ["Foreground"]
    await kube_api.garbage_collected()  # Foreground: the job goes once its pods are gone
    assert not kube_api.jobs and not kube_api.pods


async def test_a_failing_flow_deletes_its_job(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.script = _runs_until_deleted

    async def broken_handler(line: str) -> None:
        raise RuntimeError(f"flow broke on {line!r}")

    with pytest.raises(RuntimeError, match="flow broke on 'step 0'"):
        await target.run(i2v_job(nas), broken_handler)

    assert _foreground_deletes(kube_api) == ["Foreground"]
    await kube_api.garbage_collected()  # Foreground: the job goes once its pods are gone
    assert not kube_api.jobs


async def test_a_job_running_past_its_timeout_is_deleted_as_a_resource_error(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.script = _runs_until_deleted
    job = i2v_job(nas).model_copy(update={"timeout_s": 0.3})

    result = await target.run(job, Lines())

    assert result.exit_code == 4
    assert "exceeded its timeout" in result.last_lines[-1]
    assert _foreground_deletes(kube_api) == ["Foreground"]


def _watches(api: KubeApiServer) -> list[RecordedRequest]:
    return [r for r in api.requests_to("GET", "/pytorchjobs") if r.query.get("watch")]


async def test_a_dropped_watch_resumes_at_the_last_resource_version(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.drop_watches = 2  # two connections break right after their first event

    async def once_watched(api: KubeApiServer, job: dict[str, Any]) -> None:
        # Three job changes after the first watch opens: each dropped connection sees one.
        async with asyncio.timeout(10):
            await api.request_made("GET", "/pytorchjobs", watch="True")
        await _succeeds_with_progress(api, job)

    kube_api.script = once_watched
    lines = Lines()

    result = await target.run(i2v_job(nas, gpus=2), lines)

    assert result.exit_code == 0
    assert len([line for line in lines.lines if parse_line(line) is None]) == 4
    assert kube_api.drop_watches == 0  # both connections did break
    versions = [int(r.query["resourceVersion"]) for r in _watches(kube_api)]
    assert len(versions) >= 2
    # Each reconnect resumes after what it already saw, never from the start.
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


async def test_an_expired_resource_version_rereads_the_job_and_watches_on(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    async def compacting(api: KubeApiServer, job: dict[str, Any]) -> None:
        # Only once the job is watched: a watch opened after the compaction starts past it
        # (on a loaded machine the first watch can come after the script's first steps).
        await api.job_watched.wait()
        api.drop_watches = 1
        api.set_condition(job, "Created")  # the watch breaks after delivering this
        api.compact()  # ... and its resourceVersion is gone by the time it comes back
        await asyncio.sleep(0.2)
        await _succeeds_with_progress(api, job)

    kube_api.script = compacting

    result = await target.run(i2v_job(nas), Lines())

    assert result.exit_code == 0
    gets = [r for r in kube_api.requests_to("GET", "/pytorchjobs/") if not r.query.get("watch")]
    assert len(gets) >= 2  # the first read, and the re-read after 410 Gone
    assert int(_watches(kube_api)[-1].query["resourceVersion"]) >= kube_api.compacted_below


async def test_when_watching_keeps_failing_the_job_is_polled(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.watch_failures = 1000
    kube_api.script = _succeeds_with_progress

    result = await target.run(i2v_job(nas), Lines())

    assert result.exit_code == 0
    assert len(_watches(kube_api)) == 3  # no event ever arrived through a watch ...
    assert len(kube_api.requests_to("GET", "/pytorchjobs/")) >= 2  # ... polls saw the end


async def test_a_dropped_log_stream_resumes_without_losing_or_repeating_lines(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    async def chatty(api: KubeApiServer, job: dict[str, Any]) -> None:
        (pod,) = api.create_pods(job)
        api.drop_logs_after[pod] = 3
        api.running(pod)
        api.set_condition(job, "Running")
        for step in range(10):
            api.log(pod, f"line {step}")
            await asyncio.sleep(0.03)
        api.terminate(pod, 0)
        api.set_condition(job, "Succeeded")

    kube_api.script = chatty
    lines = Lines()

    await target.run(i2v_job(nas), lines)

    assert lines.lines == [f"line {step}" for step in range(10)]
    assert len(kube_api.requests_to("GET", "/log")) >= 2


async def test_pod_log_copies_stop_at_their_limits_with_a_note_and_say_what_they_dropped(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = i2v_job(nas, gpus=2)
    line = "x" * 99  # 100 bytes with its newline
    name_of: dict[str, str] = {}

    async def chatty(api: KubeApiServer, manifest: dict[str, Any]) -> None:
        master, worker = api.create_pods(manifest)
        name_of.update(master=master, worker=worker)
        for pod in (master, worker):
            api.running(pod)
        api.set_condition(manifest, "Running")
        for step in range(40):
            api.log(master, f"{step:02d}{line[2:]}")
        # The worker's lines come once the Master's copy is full: the order the totals need.
        copy = job.workdir / "logs" / f"{master}.log"
        for _ in range(500):  # 10 s at most: a copy that never closes fails the asserts below
            if copy.is_file() and "[gpuflow: this copy stops here" in copy.read_text():
                break
            await asyncio.sleep(0.02)
        for step in range(40):
            api.log(worker, f"{step:02d}{line[2:]}")
        for pod in (master, worker):
            api.terminate(pod, 0)
        api.set_condition(manifest, "Succeeded")

    kube_api.script = chatty
    lines = Lines()
    capped = _target(target, pod_log_max_bytes=2000, job_log_max_bytes=3000)

    result = await capped.run(job, lines)

    assert result.exit_code == 0
    assert len(lines.lines) == 40, "every Master line still reaches the flow"
    master = (job.workdir / "logs" / f"{name_of['master']}.log").read_text().splitlines()
    worker = (job.workdir / "logs" / f"{name_of['worker']}.log").read_text().splitlines()
    # The Master's copy stops at its own 2,000 bytes; the worker's at the job's 3,000.
    assert master[:-1] == lines.lines[:20]
    assert worker[:-1] == [f"{step:02d}{line[2:]}" for step in range(10)]
    kubectl = f"kubectl logs -n default {name_of['master']} -c pytorch"
    assert master[-1].startswith("[gpuflow: this copy stops here, at its limit of 2000 bytes")
    assert kubectl in master[-1]
    assert "the job's limit of 3000 bytes for all pods" in worker[-1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"2000 bytes (20 lines) of pod {name_of['master']}'s log were not copied" in "\n".join(
        warnings
    )
    assert any(
        f"3000 bytes (30 lines) of pod {name_of['worker']}'s log" in w and "kubectl logs" in w
        for w in warnings
    )


async def test_in_a_flow_pod_the_job_is_owned_by_the_flow_pods_job(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube_api.pods[("default", "flow-run-abc-x7k2p")] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "flow-run-abc-x7k2p",
            "namespace": "default",
            "labels": {},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "flow-run-abc", "uid": "u-123"}
            ],
        },
        "spec": {"containers": [{"name": "prefect-job", "image": "prefect"}]},
    }
    monkeypatch.setenv("GPUFLOW_FLOW_POD_NAME", "flow-run-abc-x7k2p")
    kube_api.script = _succeeds_with_progress

    await target.run(i2v_job(nas), Lines())

    (create,) = kube_api.requests_to("POST", "/pytorchjobs")
    assert create.body["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "flow-run-abc",
            "uid": "u-123",
            "blockOwnerDeletion": True,
            "controller": False,
        }
    ]


# Owner kinds the flow pod names in ownerReferences -> (API group, resource).
_OWNER_RESOURCES = {("batch/v1", "Job"): ("batch", "jobs"),
                    ("kubeflow.org/v1", "PyTorchJob"): ("kubeflow.org", "pytorchjobs")}  # fmt: skip


async def test_every_blocking_owner_reference_sent_is_allowed_by_the_flow_pods_role(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With OwnerReferencesPermissionEnforcement, blockOwnerDeletion on an owner needs
    # update on its <resource>/finalizers (kube-apiserver's gc admission plugin).
    kube_api.pods[("default", "flow-run-abc-x7k2p")] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "flow-run-abc-x7k2p",
            "namespace": "default",
            "labels": {},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "flow-run-abc", "uid": "u-123"}
            ],
        },
        "spec": {"containers": [{"name": "prefect-job", "image": "prefect"}]},
    }
    monkeypatch.setenv("GPUFLOW_FLOW_POD_NAME", "flow-run-abc-x7k2p")
    kube_api.script = _succeeds_with_progress
    with_secret = _target(target, secret_env={"HF_TOKEN": SecretStr("hf_value")})

    await with_secret.run(i2v_job(nas), Lines())

    sent = [
        reference
        for request in kube_api.requests
        if isinstance(request.body, dict)
        for reference in request.body.get("metadata", {}).get("ownerReferences", [])
        if reference.get("blockOwnerDeletion")
    ]
    assert {(r["apiVersion"], r["kind"]) for r in sent} == set(_OWNER_RESOURCES)
    for reference in sent:
        group, resource = _OWNER_RESOURCES[(reference["apiVersion"], reference["kind"])]
        assert any(
            group in rule["apiGroups"]
            and f"{resource}/finalizers" in rule["resources"]
            and "update" in rule["verbs"]
            for rule in FLOW_POD_RULES
        ), f"no update on {group} {resource}/finalizers"


async def test_secret_values_reach_the_job_through_a_secret_never_the_manifest(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "hf_SECRET-7f3a9c-do-not-leak"
    with_secret = _target(target, secret_env={"HF_TOKEN": SecretStr(token)})
    kube_api.script = _succeeds_with_progress
    caplog.set_level("DEBUG")

    await with_secret.run(i2v_job(nas), Lines())

    (create,) = kube_api.requests_to("POST", "/pytorchjobs")
    assert token not in json.dumps(create.body)
    assert token not in caplog.text
    (name,) = {key[1] for key in kube_api.jobs}
    container = create.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"
    ][0]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"{name}-env", "key": "HF_TOKEN"}},
    } in container["env"]
    secret = kube_api.secrets[("default", f"{name}-env")]
    # stringData is write-only: the API server keeps it as base64 data.
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == token
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "PyTorchJob",
        name,
        kube_api.job(name)["metadata"]["uid"],
    )


async def test_a_job_with_a_secret_is_created_suspended_and_resumed_once_its_secret_is_owned(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    with_secret = _target(target, secret_env={"HF_TOKEN": SecretStr("hf_value")})
    kube_api.script = _succeeds_with_progress

    result = await with_secret.run(i2v_job(nas), Lines())

    assert result.exit_code == 0
    writes = [r for r in kube_api.requests if r.method in ("POST", "PATCH", "PUT", "DELETE")]
    assert [(r.method, r.path.rsplit("/", 2)[-2:]) for r in writes][:3] == [
        ("POST", ["default", "pytorchjobs"]),
        ("POST", ["default", "secrets"]),
        ("PATCH", ["pytorchjobs", writes[0].body["metadata"]["name"]]),
    ]
    create, secret, resume = writes[:3]
    assert create.body["spec"]["runPolicy"]["suspend"] is True
    # Owned from birth: nothing ever has to patch or delete a Secret.
    (owner,) = secret.body["metadata"]["ownerReferences"]
    assert owner["kind"] == "PyTorchJob" and owner["name"] == create.body["metadata"]["name"]
    assert resume.body == [{"op": "replace", "path": "/spec/runPolicy/suspend", "value": False}]
    assert not [r for r in kube_api.requests if "/secrets/" in r.path]
    (name,) = {key[1] for key in kube_api.jobs}
    conditions = kube_api.job(name)["status"]["conditions"]
    assert ("Suspended", "False", "PyTorchJobResumed") in [
        (c["type"], c["status"], c["reason"]) for c in conditions
    ]


async def test_a_job_without_secrets_is_not_suspended(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.script = _succeeds_with_progress

    assert (await target.run(i2v_job(nas), Lines())).exit_code == 0

    (create,) = kube_api.requests_to("POST", "/pytorchjobs")
    assert "suspend" not in create.body["spec"]["runPolicy"]
    assert not kube_api.requests_to("PATCH", "/pytorchjobs")


async def test_the_flow_pods_role_only_creates_secrets() -> None:
    (rule,) = [rule for rule in FLOW_POD_RULES if "secrets" in rule["resources"]]
    assert rule == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}


async def test_a_secret_the_api_refuses_deletes_the_suspended_job_before_any_pod(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    with_secret = _target(target, secret_env={"HF_TOKEN": SecretStr("hf_value")})
    kube_api.script = _succeeds_with_progress
    assert kube_api.access is not None
    kube_api.access.grants = [
        (scope, [rule for rule in rules if "secrets" not in rule["resources"]])
        for scope, rules in kube_api.access.grants
    ]

    with pytest.raises(JobStartError, match=r"creating Secret default/.*-env failed: HTTP 403"):
        await with_secret.run(i2v_job(nas), Lines())

    await kube_api.garbage_collected()
    assert not kube_api.jobs and not kube_api.secrets and not kube_api.pods
    assert not kube_api.requests_to("PATCH", "/pytorchjobs")


async def test_a_kueue_job_with_a_secret_is_left_for_kueue_to_resume(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    config = target.pytorchjob.model_copy(update={"kueue_queue": "gpu-queue"})
    queued = _target(target, pytorchjob=config, secret_env={"HF_TOKEN": SecretStr("v")})
    kube_api.script = _succeeds_with_progress

    async def kueue() -> None:
        await kube_api.request_made("POST", "/secrets")
        (name,) = {key[1] for key in kube_api.jobs}
        kube_api.kueue_admits(name)

    admission = asyncio.create_task(kueue())
    result = await queued.run(i2v_job(nas), Lines())
    await admission

    assert result.exit_code == 0
    assert not kube_api.requests_to("PATCH", "/pytorchjobs")


INJECTIONS = [
    'a "quoted" cat\'s day',
    "line one\nline two\r\nkind: Pod\n---\napiVersion: v1",
    "$(rm -rf /); `id` && echo pwned | sh",
    "{{ name }} ${HOME} %s {0}",
    "key: value\n  - item: [1, 2]\n? complex\n&anchor *alias !!python/object:os.system",
    "émoji 🎬 \u202e rtl: tab\there \\ backslash",
]


@pytest.mark.parametrize("prompt", INJECTIONS)
async def test_prompts_reach_the_pods_verbatim_as_one_argument(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path, prompt: str
) -> None:
    kube_api.script = _succeeds_with_progress
    job = i2v_job(nas, prompt=prompt, gpus=2).model_copy(update={"env": {"GPUFLOW_NOTE": prompt}})

    await target.run(job, Lines())

    for pod in kube_api.pods.values():
        (container,) = pod["spec"]["containers"]
        assert container["command"] == [job.torchrun, "--no-python", *job.argv]
        assert container["command"][4] == prompt
        assert {"name": "GPUFLOW_NOTE", "value": prompt} in container["env"]
    assert len(kube_api.pods) == 2


@pytest.mark.parametrize(
    ("gpus", "gpus_per_replica", "nproc_per_node", "under_torchrun"),
    [
        (1, 1, None, False),  # one replica, one process: the job's own argv
        (2, 1, None, True),  # two replicas
        (2, 2, None, True),  # one replica, two processes (nprocPerNode from its GPUs)
        (2, 2, "1", False),  # one replica told to run one process
    ],
)
async def test_a_job_of_more_than_one_process_runs_under_the_envs_torchrun(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    gpus: int,
    gpus_per_replica: int,
    nproc_per_node: str | None,
    under_torchrun: bool,
) -> None:
    kube_api.script = _succeeds_with_progress
    shaped = target.pytorchjob.model_copy(
        update={"gpus_per_replica": gpus_per_replica, "nproc_per_node": nproc_per_node}
    )
    job = i2v_job(nas, gpus=gpus)

    result = await _target(target, pytorchjob=shaped).run(job, Lines())

    assert result.exit_code == 0
    (create,) = kube_api.requests_to("POST", "/pytorchjobs")
    for replica in create.body["spec"]["pytorchReplicaSpecs"].values():
        (container,) = replica["template"]["spec"]["containers"]
        launcher = [job.torchrun, "--no-python"] if under_torchrun else []
        assert container["command"] == [*launcher, *job.argv]


async def test_a_job_of_two_processes_without_torchrun_is_refused_before_anything_is_sent(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    job = i2v_job(nas, gpus=2).model_copy(update={"torchrun": None})

    with pytest.raises(KubernetesConfigError) as caught:
        await target.run(job, Lines())

    assert "runs 2 processes" in str(caught.value)
    assert "no torchrun beside" in str(caught.value) and job.argv[0] in str(caught.value)
    assert not kube_api.requests_to("POST", "/pytorchjobs")


async def test_an_interpreter_outside_the_nas_is_refused_before_anything_is_sent(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path, tmp_path: Path
) -> None:
    job = i2v_job(nas).model_copy(update={"argv": ["/home/me/.venv/bin/i2v", "--prompt", "x"]})

    with pytest.raises(
        KubernetesConfigError, match=r"interpreter '/home/me/.venv/bin/i2v' is not under"
    ):
        await target.run(job, Lines())

    assert kube_api.requests == []


async def test_a_nul_byte_no_process_could_receive_is_refused_naming_the_argument(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    job = i2v_job(nas, prompt="before\x00after")

    with pytest.raises(
        KubernetesConfigError, match=r"argv\[2\] of job 'i2v-run-1' holds a NUL byte"
    ):
        await target.run(job, Lines())

    assert kube_api.requests == []


async def test_gpus_that_do_not_fit_the_replica_shape_are_refused_naming_both(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    config = target.pytorchjob.model_copy(update={"gpus_per_replica": 4})

    with pytest.raises(KubernetesConfigError, match=r"job needs 6 GPUs.*gpus_per_replica \(4\)"):
        await _target(target, pytorchjob=config).run(i2v_job(nas, gpus=6), Lines())

    assert not kube_api.requests_to("POST", "/pytorchjobs")


async def test_a_cluster_without_the_training_operator_is_named_as_such(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    kube_api.crd = None

    with pytest.raises(JobStartError, match=r"no pytorchjobs.kubeflow.org CRD.*training operator"):
        await target.run(i2v_job(nas), Lines())

    assert not kube_api.requests_to("POST", "/pytorchjobs")


async def test_a_restarted_replica_is_followed_again_under_its_reused_name(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    async def restarts_once(api: KubeApiServer, job: dict[str, Any]) -> None:
        (pod,) = api.create_pods(job)
        api.running(pod)
        api.set_condition(job, "Running")
        api.log(pod, "first attempt")
        await asyncio.sleep(0.2)
        api.terminate(pod, 137, "Error")
        api.set_condition(job, "Restarting", "PyTorchJobRestarting", "pod preempted")
        await asyncio.sleep(0.2)
        (again,) = api.create_pods(job)  # same name, new uid
        api.running(again)
        api.set_condition(job, "Running")
        api.log(again, "second attempt")
        await asyncio.sleep(0.2)
        api.terminate(again, 0)
        api.set_condition(job, "Succeeded")

    kube_api.script = restarts_once
    lines = Lines()
    job = i2v_job(nas)

    result = await target.run(job, lines)

    assert result.exit_code == 0
    assert lines.lines == ["first attempt", "second attempt"]
    (copy,) = (job.workdir / "logs").iterdir()
    assert copy.read_text().splitlines() == ["first attempt", "second attempt"]


async def test_api_hiccups_while_the_job_runs_do_not_fail_it(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    async def flaky(api: KubeApiServer, job: dict[str, Any]) -> None:
        (pod,) = api.create_pods(job)
        api.running(pod)
        api.set_condition(job, "Running")
        api.failing_reads = 4  # pod lists and log reads answer 500 for a while
        for step in range(5):
            api.log(pod, f"line {step}")
            await asyncio.sleep(0.05)
        api.terminate(pod, 0)
        api.set_condition(job, "Succeeded")

    kube_api.script = flaky
    lines = Lines()

    result = await target.run(i2v_job(nas), lines)

    assert result.exit_code == 0
    assert lines.lines == [f"line {step}" for step in range(5)]
    assert kube_api.failing_reads == 0  # the failures did happen


async def test_an_api_server_that_keeps_failing_ends_the_run_retryably(
    kube_api: KubeApiServer, target: KubernetesPyTorchJob, nas: Path
) -> None:
    async def broken(api: KubeApiServer, job: dict[str, Any]) -> None:
        api.failing_reads = 10_000

    kube_api.script = broken

    with pytest.raises(JobStartError, match="failed 11 times in a row") as caught:
        await target.run(i2v_job(nas), Lines())

    assert caught.value.retryable
    assert _foreground_deletes(kube_api) == ["Foreground"]


async def test_missing_credentials_name_where_they_were_looked_for(
    target: KubernetesPyTorchJob, nas: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    without = _target(target, cluster_config=None)

    with pytest.raises(
        KubernetesConfigError, match=f"no usable Kubernetes credentials from KUBECONFIG='{missing}'"
    ):
        await without.run(i2v_job(nas), Lines())


async def test_without_permission_to_read_the_crd_the_server_validates_alone(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube_api.crd_forbidden = True
    kube_api.script = _succeeds_with_progress

    result = await target.run(i2v_job(nas), Lines())

    assert result.exit_code == 0
    assert "Cannot read CRD pytorchjobs.kubeflow.org (forbidden)" in caplog.text
    (create,) = kube_api.requests_to("POST", "/pytorchjobs")
    assert create.query.get("fieldValidation") == "Strict"


@pytest.mark.parametrize("operator_deletes_failed_pods", [False, True], ids=["v1.9.4+", "v1.9.3"])
async def test_an_image_without_the_envs_interpreter_fails_as_a_config_error_naming_it(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    operator_deletes_failed_pods: bool,
) -> None:
    # The pods run their container's command here (the NAS is a local directory): the
    # check, then the job, which the check never reaches.
    kube_api.script = run_containers_locally
    kube_api.operator_deletes_failed_pods = operator_deletes_failed_pods
    wanted = BaseInterpreter(path=str(nas / "no-python" / "python3.11"), version="3.11.2")
    job = i2v_job(nas).model_copy(update={"interpreter": wanted})
    job.workdir.mkdir(parents=True)
    lines = Lines()

    result = await target.run(job, lines)

    # The exit code comes from the watch: a config error, not retried, on every operator.
    assert result.exit_code == ExitCode.CONFIG_ERROR
    assert not JobFailedError(result.exit_code, "").retryable
    (create,) = kube_api.requests_to("POST", "/pytorchjobs")
    (container,) = create.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"
    ]
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert container["command"][-len(job.argv) :] == job.argv
    if operator_deletes_failed_pods:
        # Before v1.9.4 the operator deletes a failed job's pods before it says Failed: a
        # container that fails within milliseconds is gone before its log can be read.
        return
    (line,) = lines.lines
    assert line.startswith(f"gpuflow: image {target.pytorchjob.image} cannot run this job: ")
    assert f"built on Python 3.11.2 at {wanted.path}, but {wanted.path} does not exist" in line
