"""The ``kubernetes`` work pool's base job template and the flow pod's RBAC."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration
from pydantic import SecretStr

from gpuflow.compute.kubernetes.pool import (
    CRD_READER_RULES,
    FLOW_POD_RULES,
    PREFECT_VARIABLE_DEFAULTS,
    kubernetes_base_job_template,
    rbac_manifests,
)
from gpuflow.compute.kubernetes.status import JobStartError
from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob
from gpuflow.ops.local_server import LocalServer
from gpuflow.ops.pool_templates import RBAC_PATH
from tests.kubernetes.test_lifecycle import Lines, _succeeds_with_progress, i2v_job
from tests.support.kube_api_server import KubeApiServer, RecordedRequest
from tests.support.prefect_variables import prefect_variables

KUBERNETES_VERSION = "1.33"
STACK_VARIABLES = {
    "gpuflow_k8s_namespace": "video-team",
    "gpuflow_k8s_service_account": "video-flow",
    "gpuflow_nas_pvc_name": "video-nas",
    "gpuflow_nas_mount_path": "/shared",
}


RBAC_FILE = Path(__file__).resolve().parents[2] / "deployments" / RBAC_PATH


def test_every_rbac_document_is_a_valid_kubernetes_object() -> None:
    documents = list(yaml.safe_load_all(RBAC_FILE.read_text()))

    assert [doc["kind"] for doc in documents] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    ]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


_NAMESPACED = re.compile(
    r"^/apis?/(?:(?P<group>[^/]+)/)?v1/namespaces/[^/]+/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_CLUSTER = re.compile(r"^/apis/(?P<group>[^/]+)/v1/(?P<resource>[^/]+)/(?P<name>[^/]+)$")


def _permission(request: RecordedRequest) -> tuple[bool, str, str, str, str]:
    """(namespaced, apiGroup, resource, verb, name) of one API request, as RBAC sees it."""
    match = _NAMESPACED.match(request.path)
    namespaced = match is not None
    if match is None:
        match = _CLUSTER.match(request.path)
    assert match is not None, request.path
    group = match["group"] if match["group"] and match["group"] != "api" else ""
    resource = match["resource"] + (
        f"/{match.groupdict().get('sub')}" if match.groupdict().get("sub") else ""
    )
    name = match["name"] or ""
    verbs = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}
    if request.method == "GET":
        verb = "get" if name else ("watch" if request.query.get("watch") else "list")
    else:
        verb = verbs[request.method]
    return namespaced, group, resource, verb, name


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str) -> bool:
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for rule in rules
    )


@pytest.mark.anyio
async def test_the_role_allows_every_call_the_backend_makes(
    kube_api: KubeApiServer,
    target: KubernetesPyTorchJob,
    nas: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube_api.pods[("default", "flow-pod")] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "flow-pod", "namespace": "default", "labels": {}},
        "spec": {"containers": [{"name": "prefect-job", "image": "prefect"}]},
    }
    monkeypatch.setenv("GPUFLOW_FLOW_POD_NAME", "flow-pod")
    kube_api.script = _succeeds_with_progress
    kube_api.drop_watches = 1
    full = target.model_copy(update={"secret_env": {"API_KEY": SecretStr("k")}})
    await full.run(i2v_job(nas, gpus=2), Lines())
    kube_api.script = None
    kube_api.script = _never_starts
    with pytest.raises(JobStartError, match="cannot start"):
        await full.model_copy(update={"pending_deadline_s": 0.2}).run(i2v_job(nas), Lines())

    used = {_permission(request) for request in kube_api.requests}

    assert {verb for *_, verb, _ in used} >= {"create", "get", "list", "watch", "delete", "patch"}
    for namespaced, group, resource, verb, name in used:
        rules = FLOW_POD_RULES if namespaced else CRD_READER_RULES
        assert _allowed(rules, group, resource, verb, name), (group, resource, verb, name)


async def _never_starts(api: KubeApiServer, job: dict[str, Any]) -> None:
    for pod in api.create_pods(job):
        api.waiting(pod, "InvalidImageName", "bad")


@pytest.mark.integration
@pytest.mark.anyio
async def test_prefect_accepts_the_template_and_renders_a_valid_flow_pod_job(
    prefect_server: LocalServer,
) -> None:
    template = kubernetes_base_job_template()
    async with get_client() as client:
        pool_name = f"gpuflow-k8s-{uuid.uuid4().hex[:8]}"
        await client.create_work_pool(
            WorkPoolCreate(name=pool_name, type="kubernetes", base_job_template=template)
        )
        try:
            stored = await client.read_work_pool(pool_name)
            assert stored.base_job_template == template
            # The stack's values come from Prefect variables (bootstrap or Terraform sets them).
            async with prefect_variables(client, STACK_VARIABLES):
                configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
                    stored.base_job_template, {"image": "registry.example/gpuflow:1"}, client=client
                )
        finally:
            await client.delete_work_pool(pool_name)
    configuration.prepare_for_flow_run(
        FlowRun(id=uuid.uuid4(), name="happy-cat", flow_id=uuid.uuid4())
    )
    job = configuration.job_manifest

    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (1, 1)
    # A dead flow's Job (and, through ownerReferences, its PyTorchJob) goes away quickly.
    assert job["spec"]["ttlSecondsAfterFinished"] == 30
    assert job["metadata"]["namespace"] == "video-team"
    assert pod["serviceAccountName"] == "video-flow"
    assert pod["volumes"] == [{"name": "nas", "persistentVolumeClaim": {"claimName": "video-nas"}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "nas", "mountPath": "/shared"}]
    assert set(PREFECT_VARIABLE_DEFAULTS) == set(STACK_VARIABLES)
    sa = rbac_manifests()[0]["metadata"]["name"]
    assert PREFECT_VARIABLE_DEFAULTS["gpuflow_k8s_service_account"] == sa
