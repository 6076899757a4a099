"""The ``kubernetes`` work pool for gpuflow flows: base job template and RBAC, built as data.

Flow-run pods start from prefect-kubernetes' default base job template, plus the NAS
PVC mounted at the same path as in the GPU job pods (prebuilt venvs are not
relocatable) and a service account whose Role lets the flow create and follow its
PyTorchJob. ``gpuflow bootstrap`` installs the template from this code; the copies in the
repository's ``deployments/`` are rendered by ``gpuflow.ops.pool_templates``.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect_kubernetes.worker import KubernetesWorker

from gpuflow.compute.kubernetes.manifest import CRD_NAME, GROUP, PLURAL
from gpuflow.compute.pool_variables import default_to_variables

DEFAULT_NAMESPACE = "gpuflow"
DEFAULT_SERVICE_ACCOUNT = "gpuflow-flow"
DEFAULT_NAS_CLAIM = "gpuflow-nas"
DEFAULT_NAS_MOUNT_PATH = "/mnt/nas"
# Template variable -> the Prefect variable its default reads, and the value `gpuflow
# bootstrap` gives that variable when neither the stack nor Terraform did: a deployment
# then names no namespace, account or claim.
PREFECT_VARIABLES: dict[str, str] = {
    "namespace": "gpuflow_k8s_namespace",
    "service_account_name": "gpuflow_k8s_service_account",
    "nas_claim_name": "gpuflow_nas_pvc_name",
    "nas_mount_path": "gpuflow_nas_mount_path",
}
PREFECT_VARIABLE_DEFAULTS: dict[str, str] = {
    "gpuflow_k8s_namespace": DEFAULT_NAMESPACE,
    "gpuflow_k8s_service_account": DEFAULT_SERVICE_ACCOUNT,
    "gpuflow_nas_pvc_name": DEFAULT_NAS_CLAIM,
    "gpuflow_nas_mount_path": DEFAULT_NAS_MOUNT_PATH,
}
FINISHED_FLOW_JOB_TTL_S = 30
_NAS_VOLUME = "nas"

# What the flow pod does in its namespace (gpuflow/compute/kubernetes/), resource by resource.
FLOW_POD_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [GROUP],
        "resources": [PLURAL],
        # patch: resuming a job created suspended (the one with a Secret).
        "verbs": ["create", "get", "list", "watch", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    # The per-job Secret carrying secret env values: only created, owned by its job from
    # birth (the garbage collector deletes it), so the flow pod can neither read, change
    # nor delete any Secret. create cannot be narrowed by resourceNames: docs/kubernetes.md.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    # Owner references with blockOwnerDeletion (the PyTorchJob owned by the flow pod's
    # Job, the Secret by its PyTorchJob) need update on the owner's finalizers where the
    # OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, others).
    {"apiGroups": ["batch"], "resources": ["jobs/finalizers"], "verbs": ["update"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
]
# Reading the PyTorchJob CRD, to validate manifests before sending them (cluster-scoped).
CRD_READER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "resourceNames": [CRD_NAME],
        "verbs": ["get"],
    }
]


def kubernetes_base_job_template() -> dict[str, Any]:
    """prefect-kubernetes' default template plus the NAS volume and gpuflow's service account."""
    template: dict[str, Any] = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    variables = template["variables"]["properties"]
    # A flow's PyTorchJob is owned by the flow pod's Job: deleting that Job soon after the
    # flow died takes the GPU job with it, well before the GPU slots' lease (>= 60 s + 15 s)
    # can expire and hand the still-busy GPUs to another run.
    variables["finished_job_ttl"]["default"] = FINISHED_FLOW_JOB_TTL_S
    variables["nas_claim_name"] = {
        "title": "NAS claim name",
        "description": "ReadWriteMany PVC of the shared storage (models, envs, workspaces).",
        "type": "string",
    }
    variables["nas_mount_path"] = {
        "title": "NAS mount path",
        "description": "Where the NAS is mounted: the same path in flow pods and job pods.",
        "type": "string",
    }
    default_to_variables(variables, PREFECT_VARIABLES)
    job_spec = template["job_configuration"]["job_manifest"]["spec"]
    pod_spec = job_spec["template"]["spec"]
    # The default template puts these Job fields in the pod spec, where the API server
    # drops them as unknown (and strict validation refuses them): move them to the Job.
    for job_field in ("completions", "parallelism"):
        if job_field in pod_spec:
            job_spec[job_field] = pod_spec.pop(job_field)
    pod_spec["volumes"] = [
        {"name": _NAS_VOLUME, "persistentVolumeClaim": {"claimName": "{{ nas_claim_name }}"}}
    ]
    (container,) = pod_spec["containers"]
    container["volumeMounts"] = [{"name": _NAS_VOLUME, "mountPath": "{{ nas_mount_path }}"}]
    return template


def rbac_manifests(
    namespace: str = DEFAULT_NAMESPACE, service_account: str = DEFAULT_SERVICE_ACCOUNT
) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding (namespace), ClusterRole and its binding (CRD)."""
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    role_name = f"{service_account}-pytorchjobs"
    crd_reader = f"{service_account}-{namespace}-crd-reader"
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role_name, "namespace": namespace},
            "rules": FLOW_POD_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role_name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": [subject],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": crd_reader},
            "rules": CRD_READER_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": crd_reader},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": crd_reader,
            },
            "subjects": [subject],
        },
    ]
