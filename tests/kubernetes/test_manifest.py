"""PyTorchJob manifests for many random configurations, checked against the real schemas:
the PyTorchJob CRD's openAPIV3Schema and the core Pod schema (kubernetes-validate)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuflow.compute.base import JobSpec
from gpuflow.compute.interpreter_check import SCRIPT, SCRIPT_NAME, SHELL
from gpuflow.compute.kubernetes.crd import crd_schema, validate_against_crd
from gpuflow.compute.kubernetes.manifest import (
    CONTAINER_NAME,
    HamiVgpu,
    KubernetesConfigError,
    OwnerReference,
    PyTorchJobConfig,
    RunPolicy,
    SchedulingPolicy,
    SecretEnvVar,
    Toleration,
    build_pytorchjob,
    job_name,
)
from gpuflow.envs.records import BaseInterpreter

KUBERNETES_VERSION = "1.33"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")

dns_labels = st.from_regex(r"\A[a-z]([a-z0-9-]{0,14}[a-z0-9])?\Z")
env_names = st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,15}\Z")
# Anything a user may type, except NUL (no process can receive it; the target refuses it).
user_text = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40)
quantities = st.sampled_from(["500m", "1", "4", "0.5", "16", "1Gi", "512Mi", "64G", "1.5Gi"])
label_values = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?\Z")

tolerations = st.one_of(
    st.builds(
        Toleration,
        key=st.sampled_from(["nvidia.com/gpu", "dedicated", "example.org/spot"]),
        operator=st.just("Exists"),
        effect=st.sampled_from([None, "NoSchedule", "PreferNoSchedule"]),
    ),
    st.builds(
        Toleration,
        key=st.sampled_from(["dedicated", "gpu-pool"]),
        operator=st.just("Equal"),
        value=label_values,
        effect=st.just("NoExecute"),
        toleration_seconds=st.integers(0, 3600),
    ),
)


@st.composite
def configs_and_jobs(draw: st.DrawFn) -> tuple[PyTorchJobConfig, JobSpec]:
    gpus_per_replica = draw(st.integers(0, 8))
    fixed_workers = draw(st.one_of(st.none(), st.integers(0, 6)))
    if fixed_workers is not None:
        gpus = (1 + fixed_workers) * gpus_per_replica
    elif gpus_per_replica:
        gpus = gpus_per_replica * draw(st.integers(1, 8))
    else:
        gpus = 0
    mount = draw(st.sampled_from(["/mnt/nas", "/nas", "/data/gpuflow-nas"]))
    gpu_type = draw(st.one_of(st.none(), st.sampled_from(["h100", "a100", "L40S"])))
    config = PyTorchJobConfig(
        namespace=draw(dns_labels),
        image=draw(
            st.from_regex(r"\A[a-z0-9.]{1,12}(:[0-9]{2,5})?/[a-z0-9/_-]{1,20}:[a-z0-9._-]{1,10}\Z")
        ),
        image_pull_policy=draw(st.sampled_from(["Always", "IfNotPresent", "Never"])),
        image_pull_secrets=draw(st.lists(dns_labels, max_size=2)),
        service_account_name=draw(st.one_of(st.none(), dns_labels)),
        worker_replicas=fixed_workers,
        gpus_per_replica=gpus_per_replica,
        gpu_resource=draw(st.sampled_from(["nvidia.com/gpu", "amd.com/gpu"])),
        vgpu=draw(
            st.one_of(
                st.none(),
                st.builds(
                    HamiVgpu,
                    memory_mib=st.one_of(st.none(), st.integers(1, 81920)),
                    cores_percent=st.one_of(st.none(), st.integers(1, 100)),
                    annotations=st.dictionaries(
                        st.sampled_from(["nvidia.com/use-gputype", "nvidia.com/nouse-gputype"]),
                        user_text,
                        max_size=2,
                    ),
                ),
            )
        ),
        nproc_per_node=draw(st.one_of(st.none(), st.sampled_from(["auto", "gpu", "cpu", "4"]))),
        cpu=draw(quantities),
        memory=draw(quantities),
        gpu_type_values=draw(
            st.sampled_from(
                [{}, {"h100": "NVIDIA-H100-80GB-HBM3", "a100": "NVIDIA-A100-SXM4-80GB"}]
            )
        ),
        tolerations=draw(st.lists(tolerations, max_size=3)),
        spread=draw(st.sampled_from(["required", "preferred", "none"])),
        nas_claim_name=draw(dns_labels),
        nas_mount_path=PurePosixPath(mount),
        shm_size=draw(quantities),
        env=draw(st.dictionaries(env_names, user_text, max_size=3)),
        secret_env=draw(
            st.lists(
                st.builds(SecretEnvVar, name=env_names, secret_name=dns_labels, key=env_names),
                max_size=2,
            )
        ),
        env_from_secrets=draw(st.lists(dns_labels, max_size=2)),
        run_policy=draw(
            st.builds(
                RunPolicy,
                clean_pod_policy=st.sampled_from(["None", "Running", "All"]),
                ttl_seconds_after_finished=st.one_of(st.none(), st.integers(0, 86400)),
                active_deadline_seconds=st.one_of(st.none(), st.integers(1, 10**6)),
                backoff_limit=st.integers(0, 10),
            )
        ),
        scheduling_policy=draw(
            st.one_of(
                st.none(),
                st.builds(
                    SchedulingPolicy,
                    queue=st.one_of(st.none(), dns_labels),
                    priority_class=st.one_of(st.none(), dns_labels),
                    min_available=st.one_of(st.none(), st.integers(1, 9)),
                ),
            )
        ),
        kueue_queue=draw(st.one_of(st.none(), label_values)),
        labels=draw(
            st.dictionaries(
                st.sampled_from(["team", "example.org/cost-center"]), label_values, max_size=2
            )
        ),
        annotations=draw(
            st.dictionaries(st.sampled_from(["note", "example.org/ticket"]), user_text, max_size=2)
        ),
    )
    job = JobSpec(
        name=draw(st.text(min_size=1, max_size=80)),
        argv=[
            f"{mount}/envs/{draw(dns_labels)}/.venv/bin/i2v",
            *draw(st.lists(user_text, max_size=6)),
        ],
        env=draw(st.dictionaries(env_names, user_text, max_size=3)),
        workdir=Path(mount) / "workspaces" / draw(dns_labels),
        gpus=gpus,
        gpu_type=gpu_type,
        timeout_s=draw(st.floats(1, 86400)),
        torchrun=f"{mount}/envs/t/.venv/bin/torchrun",
        interpreter=draw(
            st.one_of(
                st.none(),
                st.builds(
                    BaseInterpreter,
                    path=st.sampled_from(["/usr/bin/python3.11", f"{mount}/python/bin/python3"]),
                    version=st.sampled_from(["3.11.2", "3.12.7"]),
                ),
            )
        ),
    )
    return config, job


def _as_pod(template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "replica-0", **template["metadata"]},
        "spec": template["spec"],
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=configs_and_jobs(), owned=st.booleans())
def test_every_configuration_renders_a_job_both_schemas_accept(
    pytorchjob_crd: dict[str, Any], case: tuple[PyTorchJobConfig, JobSpec], owned: bool
) -> None:
    config, job = case
    owner = OwnerReference(api_version="batch/v1", kind="Job", name="flow-1", uid="u-1")
    name = job_name(job.name)

    manifest = build_pytorchjob(
        config,
        job,
        name=name,
        secret_env_name=f"{name}-env",
        secret_env_keys=("HF_TOKEN",),
        owner=owner if owned else None,
        pending_allowance_s=600,
    )

    validate_against_crd(manifest, crd_schema(pytorchjob_crd))
    json.dumps(manifest)  # plain data: what the client sends is exactly this
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 48
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    total = sum(spec["replicas"] for spec in replicas.values())
    assert replicas["Master"]["replicas"] == 1
    if config.gpus_per_replica:
        assert total * config.gpus_per_replica == job.gpus
    for spec in replicas.values():
        kubernetes_validate.validate(_as_pod(spec["template"]), KUBERNETES_VERSION, strict=True)
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == CONTAINER_NAME
        # Verbatim, one element per argument; under torchrun unless exactly one process;
        # behind the interpreter check when the job's env names its interpreter.
        single = config.launches_processes(job.gpus) == 1
        launcher = [] if single else [job.torchrun, "--no-python"]
        check: list[str] = []
        if job.interpreter is not None:
            interpreter = job.interpreter
            check = [SHELL, "-c", SCRIPT, SCRIPT_NAME, f"image {config.image}"]
            check += [interpreter.path, interpreter.minor, interpreter.version]
        assert container["command"] == [*check, *launcher, *job.argv]
        for key, value in job.env.items():
            assert {"name": key, "value": value} in container["env"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert {"name": "nas", "mountPath": str(config.nas_mount_path)} in container["volumeMounts"]
        labels = {**manifest["metadata"]["labels"], **spec["template"]["metadata"]["labels"]}
        assert all(_LABEL_VALUE.match(value) and len(value) <= 63 for value in labels.values())
    deadline = manifest["spec"]["runPolicy"]["activeDeadlineSeconds"]
    assert deadline <= int(job.timeout_s + 600) + 1
    if config.run_policy.active_deadline_seconds is None:
        assert deadline == int(job.timeout_s + 600) + 1


def _sample() -> tuple[PyTorchJobConfig, JobSpec]:
    config = PyTorchJobConfig(
        image="registry.example/i2v:1",
        nas_mount_path=PurePosixPath("/mnt/nas"),
        gpus_per_replica=2,
        vgpu=HamiVgpu(
            memory_mib=24000, cores_percent=50, annotations={"nvidia.com/use-gputype": "A100"}
        ),
        scheduling_policy=SchedulingPolicy(queue="gpu", priority_class="high", min_available=2),
        kueue_queue="team-a",
        secret_env=[SecretEnvVar(name="HF_TOKEN", secret_name="hf", key="token")],
        env_from_secrets=["object-store"],
        gpu_type_values={"h100": "NVIDIA-H100-80GB-HBM3"},
    )
    job = JobSpec(
        name="i2v-run",
        argv=["/mnt/nas/envs/k/.venv/bin/i2v", "--prompt", "x"],
        workdir=Path("/mnt/nas/workspaces/run"),
        gpus=4,
        gpu_type="h100",
        torchrun="/mnt/nas/envs/k/.venv/bin/torchrun",
    )
    return config, job


def test_the_sample_places_every_setting_where_kubernetes_reads_it() -> None:
    config, job = _sample()

    manifest = build_pytorchjob(config, job, name="i2v-run-abc123")

    spec = manifest["spec"]
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert spec["nprocPerNode"] == "2"
    assert spec["runPolicy"]["schedulingPolicy"] == {
        "queue": "gpu",
        "priorityClass": "high",
        "minAvailable": 2,
    }
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    template = spec["pytorchReplicaSpecs"]["Master"]["template"]
    assert template["metadata"]["annotations"] == {"nvidia.com/use-gputype": "A100"}
    assert template["spec"]["schedulerName"] == "hami-scheduler"
    assert template["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert template["spec"]["affinity"]["podAntiAffinity"]
    assert template["spec"]["volumes"][1] == {
        "name": "dshm",
        "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"},
    }
    (container,) = template["spec"]["containers"]
    assert container["resources"]["limits"] == {
        "cpu": "8",  # 4 per GPU of the replica
        "memory": "40Gi",  # 16Gi per GPU, plus the 8Gi /dev/shm charged to it
        "nvidia.com/gpu": "2",
        "nvidia.com/gpumem": "24000",
        "nvidia.com/gpucores": "50",
    }
    assert container["envFrom"] == [{"secretRef": {"name": "object-store"}}]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    } in container["env"]


@pytest.mark.parametrize(
    ("settings", "cpu", "memory"),
    [
        ({"gpus_per_replica": 1}, "4", "24Gi"),
        ({"gpus_per_replica": 8}, "32", "136Gi"),
        ({"gpus_per_replica": 0}, "4", "24Gi"),  # a CPU-only replica counts as one GPU
        ({"gpus_per_replica": 2, "shm_size": "500M"}, "8", f"{32 * 1024 + 477}Mi"),
        ({"gpus_per_replica": 8, "cpu": "6", "memory": "100Gi"}, "6", "100Gi"),  # as given
    ],
)
def test_replica_cpu_and_memory_scale_with_its_gpus_and_count_the_shm(
    settings: dict[str, Any], cpu: str, memory: str
) -> None:
    config = PyTorchJobConfig(
        image="registry.example/i2v:1", nas_mount_path=PurePosixPath("/mnt/nas"), **settings
    )
    gpus = max(1, config.gpus_per_replica)
    job = JobSpec(
        name="i2v-run",
        argv=["/mnt/nas/envs/k/.venv/bin/i2v"],
        workdir=Path("/mnt/nas/workspaces/run"),
        gpus=gpus if config.gpus_per_replica else 0,
        torchrun="/mnt/nas/envs/k/.venv/bin/torchrun",
    )
    spec = build_pytorchjob(config, job, name="i2v-run")["spec"]
    (container,) = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"] == cpu
    assert container["resources"]["limits"]["memory"] == memory


def test_multi_node_network_settings_reach_every_replica_and_are_off_by_default(
    pytorchjob_crd: dict[str, Any],
) -> None:
    base = {"image": "registry.example/i2v:1", "nas_mount_path": PurePosixPath("/mnt/nas")}
    efa = PyTorchJobConfig(
        **base,
        network_resources={"vpc.amazonaws.com/efa": 4},
        host_ipc=True,
        env={"FI_PROVIDER": "efa", "NCCL_DEBUG": "INFO"},
    )
    job = JobSpec(
        name="i2v-run",
        argv=["/mnt/nas/envs/k/.venv/bin/i2v"],
        workdir=Path("/mnt/nas/workspaces/run"),
        gpus=2,
        torchrun="/mnt/nas/envs/k/.venv/bin/torchrun",
    )
    for config, on in ((efa, True), (PyTorchJobConfig(**base), False)):
        manifest = build_pytorchjob(config, job, name="i2v-run")
        validate_against_crd(manifest, crd_schema(pytorchjob_crd))
        for replica in manifest["spec"]["pytorchReplicaSpecs"].values():
            pod = _as_pod(replica["template"])
            kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
            (container,) = replica["template"]["spec"]["containers"]
            for amounts in (container["resources"]["limits"], container["resources"]["requests"]):
                assert amounts.get("vpc.amazonaws.com/efa") == ("4" if on else None)
            assert replica["template"]["spec"].get("hostIPC", False) is on
            assert ({"name": "FI_PROVIDER", "value": "efa"} in container["env"]) is on


def test_the_crd_check_names_wrong_types_and_fields_the_server_would_drop(
    pytorchjob_crd: dict[str, Any],
) -> None:
    config, job = _sample()
    manifest = build_pytorchjob(config, job, name="i2v-run-abc123")
    broken = copy.deepcopy(manifest)
    broken["spec"]["runPolicy"]["backoffLimit"] = "three"
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "comand"
    ] = ["x"]

    with pytest.raises(KubernetesConfigError) as caught:
        validate_against_crd(broken, crd_schema(pytorchjob_crd))

    assert "spec.runPolicy.backoffLimit: 'three' is not of type 'integer'" in str(caught.value)
    assert (
        "spec.pytorchReplicaSpecs.Master.template.spec.containers[0].comand: unknown field"
        in str(caught.value)
    )
    validate_against_crd(manifest, crd_schema(pytorchjob_crd))


def test_a_job_whose_gpus_do_not_match_a_fixed_shape_names_both() -> None:
    config, job = _sample()
    fixed = config.model_copy(update={"worker_replicas": 3})

    with pytest.raises(
        KubernetesConfigError, match=r"job needs 4 GPUs but .* 1 master \+ 3 workers x 2 GPUs = 8"
    ):
        build_pytorchjob(fixed, job, name="i2v-run-abc123")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nas_mount_path", "relative/nas", "must be an absolute path"),
        ("cpu", "four", "String should match pattern"),
        ("namespace", "Team_A", "String should match pattern"),
        ("nproc_per_node", "all", "String should match pattern"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(field: str, value: str, message: str) -> None:
    settings_ = {"image": "registry.example/i2v:1", "nas_mount_path": "/mnt/nas", field: value}

    with pytest.raises(ValueError, match=message) as caught:
        PyTorchJobConfig.model_validate(settings_)

    assert field in str(caught.value)


def test_job_names_become_unique_dns_labels_whatever_they_were() -> None:
    names = {job_name("Wan2.2 I2V: «cat» / run #1" * 5) for _ in range(20)}

    assert len(names) == 20
    assert all(
        re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 48 for name in names
    )
    assert job_name("123").startswith("j-123-")
