"""The test API server refuses and does what kube-apiserver 1.33 does, independently of the
code under test: spoken to over HTTP, as any client would."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest

from tests.support.kube_api_server import TOKEN, KubeApiServer
from tests.support.kube_rbac import RoleBasedAccess

pytestmark = pytest.mark.anyio


@pytest.fixture
def kube_api(kube_api: KubeApiServer) -> KubeApiServer:
    """The generic semantics, asked as a cluster admin (RBAC has its own tests below)."""
    kube_api.access = None
    return kube_api


_JOBS = "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs"
_SECRETS = "/api/v1/namespaces/default/secrets"
_AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _job(name: str = "demo", **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, **metadata},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "template": {
                        "metadata": {},
                        "spec": {"containers": [{"name": "pytorch", "image": "img"}]},
                    },
                }
            }
        },
    }


def _secret(name: str = "env", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, **fields}


async def _call(
    api: KubeApiServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, list[str]]:
    """(status, JSON body, Warning headers) of one request."""
    async with (
        aiohttp.ClientSession(api.url) as session,
        session.request(
            method,
            path,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json", **_AUTH, **(headers or {})},
            params=params,
        ) as response,
    ):
        return response.status, await response.json(), response.headers.getall("Warning", [])


async def test_a_request_without_the_bearer_token_is_unauthorized(kube_api: KubeApiServer) -> None:
    status, body, _ = await _call(kube_api, "GET", _JOBS, headers={"Authorization": ""})
    assert (status, body["reason"]) == (401, "Unauthorized")
    status, _, _ = await _call(kube_api, "GET", _JOBS, headers={"Authorization": "Bearer nope"})
    assert status == 401


@pytest.mark.parametrize("name", ["Bad_Name!", "a" * 300, "-leading-dash", "UPPER"])
@pytest.mark.parametrize("path, make", [(_JOBS, _job), (_SECRETS, _secret)])
async def test_names_that_are_not_rfc_1123_subdomains_are_invalid(
    kube_api: KubeApiServer, name: str, path: str, make: Any
) -> None:
    status, body, _ = await _call(kube_api, "POST", path, make(name))
    assert (status, body["reason"]) == (422, "Invalid")
    assert "metadata.name: Invalid value" in body["message"]
    assert not kube_api.jobs and not kube_api.secrets


async def test_a_label_value_over_63_characters_is_invalid(kube_api: KubeApiServer) -> None:
    status, body, _ = await _call(kube_api, "POST", _JOBS, _job(labels={"team": "x" * 64}))
    assert (status, body["reason"]) == (422, "Invalid")
    assert "metadata.labels" in body["message"]


async def test_generate_name_gets_five_random_characters(kube_api: KubeApiServer) -> None:
    job = _job()
    del job["metadata"]["name"]
    job["metadata"]["generateName"] = "i2v-"
    status, created, _ = await _call(kube_api, "POST", _JOBS, job)
    assert status == 201
    name = created["metadata"]["name"]
    assert name.startswith("i2v-") and len(name) == len("i2v-") + 5
    assert kube_api.job(name)["metadata"]["uid"] == created["metadata"]["uid"]


async def test_a_create_with_neither_name_nor_generate_name_is_invalid(
    kube_api: KubeApiServer,
) -> None:
    job = _job()
    del job["metadata"]["name"]
    status, body, _ = await _call(kube_api, "POST", _JOBS, job)
    assert (status, body["reason"]) == (422, "Invalid")
    assert "name or generateName is required" in body["message"]


@pytest.mark.parametrize("path, make", [(_JOBS, _job), (_SECRETS, _secret)])
async def test_a_duplicate_create_is_a_conflict(
    kube_api: KubeApiServer, path: str, make: Any
) -> None:
    assert (await _call(kube_api, "POST", path, make("twice")))[0] == 201
    status, body, _ = await _call(kube_api, "POST", path, make("twice"))
    assert (status, body["reason"]) == (409, "AlreadyExists")


async def test_the_crd_schema_is_enforced_independently(kube_api: KubeApiServer) -> None:
    job = _job()
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    status, body, _ = await _call(kube_api, "POST", _JOBS, job)
    assert (status, body["reason"]) == (422, "Invalid")
    assert "spec.pytorchReplicaSpecs.Master.replicas" in body["message"]


def _with_unknown_field() -> dict[str, Any]:
    job = _job()
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicaz"] = 2
    return job


async def test_strict_field_validation_refuses_an_unknown_field(kube_api: KubeApiServer) -> None:
    status, body, _ = await _call(
        kube_api, "POST", _JOBS, _with_unknown_field(), params={"fieldValidation": "Strict"}
    )
    assert (status, body["reason"]) == (400, "BadRequest")
    assert 'unknown field "spec.pytorchReplicaSpecs.Master.replicaz"' in body["message"]
    assert not kube_api.jobs


@pytest.mark.parametrize("directive, warned", [("Warn", True), ("Ignore", False), ("", True)])
async def test_other_field_validations_prune_the_unknown_field(
    kube_api: KubeApiServer, directive: str, warned: bool
) -> None:
    params = {"fieldValidation": directive} if directive else None
    status, created, warnings = await _call(
        kube_api, "POST", _JOBS, _with_unknown_field(), params=params
    )
    assert status == 201
    assert "replicaz" not in created["spec"]["pytorchReplicaSpecs"]["Master"]
    assert "replicaz" not in kube_api.job("demo")["spec"]["pytorchReplicaSpecs"]["Master"]
    expected = ['299 - "unknown field \\"spec.pytorchReplicaSpecs.Master.replicaz\\""']
    assert warnings == (expected if warned else [])


async def test_an_unknown_field_validation_directive_is_a_bad_request(
    kube_api: KubeApiServer,
) -> None:
    status, body, _ = await _call(
        kube_api, "POST", _JOBS, _job(), params={"fieldValidation": "Lenient"}
    )
    assert (status, body["reason"]) == (400, "BadRequest")
    assert "Lenient" in body["message"]


async def test_secret_string_data_is_written_into_data_on_create_and_merge_patch(
    kube_api: KubeApiServer,
) -> None:
    status, created, _ = await _call(
        kube_api, "POST", _SECRETS, _secret(stringData={"A": "one"}, type="Opaque")
    )
    assert status == 201
    assert "stringData" not in created
    assert created["data"] == {"A": base64.b64encode(b"one").decode()}

    status, patched, _ = await _call(
        kube_api,
        "PATCH",
        f"{_SECRETS}/env",
        {"stringData": {"B": "two"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200
    assert "stringData" not in patched and "stringData" not in kube_api.secrets[("default", "env")]
    decoded = {key: base64.b64decode(value).decode() for key, value in patched["data"].items()}
    assert decoded == {"A": "one", "B": "two"}


async def test_a_secret_with_a_wrongly_typed_field_is_invalid(kube_api: KubeApiServer) -> None:
    status, body, _ = await _call(kube_api, "POST", _SECRETS, _secret(stringData=["A", "one"]))
    assert (status, body["reason"]) == (422, "Invalid")


async def test_a_secret_key_with_a_space_is_invalid(kube_api: KubeApiServer) -> None:
    status, body, _ = await _call(kube_api, "POST", _SECRETS, _secret(stringData={"HF TOKEN": "x"}))
    assert (status, body["reason"]) == (422, "Invalid")
    assert "data[HF TOKEN]" in body["message"]


async def _job_with_pods(api: KubeApiServer) -> list[str]:
    status, created, _ = await _call(api, "POST", _JOBS, _job())
    assert status == 201
    return api.create_pods(created)


async def test_orphan_deletion_keeps_the_pods(kube_api: KubeApiServer) -> None:
    pods = await _job_with_pods(kube_api)
    status, _, _ = await _call(kube_api, "DELETE", f"{_JOBS}/demo", {"propagationPolicy": "Orphan"})
    assert status == 200
    await kube_api.garbage_collected()
    assert not kube_api.jobs
    assert [key[1] for key in kube_api.pods] == pods
    assert all(not pod["metadata"]["ownerReferences"] for pod in kube_api.pods.values())


async def test_background_deletion_removes_the_job_then_its_pods(kube_api: KubeApiServer) -> None:
    await _job_with_pods(kube_api)
    status, _, _ = await _call(kube_api, "DELETE", f"{_JOBS}/demo")
    assert status == 200
    assert not kube_api.jobs
    await kube_api.garbage_collected()
    assert not kube_api.pods


async def test_foreground_deletion_marks_the_job_and_waits_for_its_pods(
    kube_api: KubeApiServer,
) -> None:
    await _job_with_pods(kube_api)
    kube_api.collector_running.clear()
    status, marked, _ = await _call(
        kube_api, "DELETE", f"{_JOBS}/demo", params={"propagationPolicy": "Foreground"}
    )
    assert status == 200
    assert marked["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in marked["metadata"]["finalizers"]
    assert kube_api.jobs and kube_api.pods  # the job stays while its pods are there
    kube_api.collector_running.set()
    await kube_api.garbage_collected()
    assert not kube_api.pods and not kube_api.jobs
    kinds = [kind for _, kind, job in kube_api.history if job["metadata"]["name"] == "demo"]
    assert kinds == ["ADDED", "MODIFIED", "DELETED"]


async def test_an_unknown_propagation_policy_is_invalid(kube_api: KubeApiServer) -> None:
    await _job_with_pods(kube_api)
    status, body, _ = await _call(
        kube_api, "DELETE", f"{_JOBS}/demo", params={"propagationPolicy": "Cascade"}
    )
    assert (status, body["reason"]) == (422, "Invalid")
    assert kube_api.jobs


async def _watch_events(api: KubeApiServer, params: dict[str, str]) -> list[tuple[str, str]]:
    async with (
        aiohttp.ClientSession(api.url, headers=_AUTH) as session,
        session.get(_JOBS, params={"watch": "true", "timeoutSeconds": "1", **params}) as response,
    ):
        assert response.status == 200
        lines = (await response.text()).splitlines()
    return [(e["type"], e["object"]["metadata"]["name"]) for e in map(json.loads, lines)]


async def test_a_watch_without_resource_version_starts_from_the_current_state(
    kube_api: KubeApiServer,
) -> None:
    for name in ("gone", "kept"):
        assert (await _call(kube_api, "POST", _JOBS, _job(name)))[0] == 201
    assert (await _call(kube_api, "DELETE", f"{_JOBS}/gone"))[0] == 200
    first = int(kube_api.history[0][0])

    assert await _watch_events(kube_api, {}) == [("ADDED", "kept")]
    assert await _watch_events(kube_api, {"resourceVersion": "0"}) == [("ADDED", "kept")]
    # From a resourceVersion, the changes after it, the deletion included.
    assert await _watch_events(kube_api, {"resourceVersion": str(first)}) == [
        ("ADDED", "kept"),
        ("DELETED", "gone"),
    ]


async def test_a_watch_without_resource_version_then_sees_new_changes(
    kube_api: KubeApiServer,
) -> None:
    watching = asyncio.create_task(_watch_events(kube_api, {}))
    await asyncio.sleep(0.2)  # let the watch start; a late start would see an ADDED too
    assert (await _call(kube_api, "POST", _JOBS, _job("late")))[0] == 201
    assert await watching == [("ADDED", "late")]


# ---- RBAC (kube-apiserver 1.33's authorizer, independent of the code's Role) -------------


def _access(rules: list[dict[str, Any]], role_namespace: str = "default") -> RoleBasedAccess:
    subject = {"kind": "ServiceAccount", "name": "flow", "namespace": "default"}
    role = {"kind": "Role", "metadata": {"name": "r", "namespace": role_namespace}, "rules": rules}
    binding = {
        "kind": "RoleBinding",
        "metadata": {"name": "r", "namespace": role_namespace},
        "roleRef": {"kind": "Role", "name": "r"},
        "subjects": [subject],
    }
    return RoleBasedAccess([role, binding], "default", "flow")


async def test_a_verb_the_role_lacks_is_forbidden_with_the_api_servers_words(
    kube_api: KubeApiServer,
) -> None:
    kube_api.access = _access([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}])
    assert (await _call(kube_api, "POST", _SECRETS, _secret(stringData={"A": "1"})))[0] == 201

    status, body, _ = await _call(kube_api, "PATCH", f"{_SECRETS}/env", {"data": {}})

    assert (status, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (
        'secrets "env" is forbidden: User "system:serviceaccount:default:flow" cannot patch '
        'resource "secrets" in API group "" in the namespace "default"'
    )
    status, body, _ = await _call(kube_api, "GET", _JOBS, params={"watch": "true"})
    assert status == 403
    assert body["message"].startswith(
        'pytorchjobs.kubeflow.org is forbidden: User "system:serviceaccount:default:flow" '
        'cannot watch resource "pytorchjobs" in API group "kubeflow.org"'
    )


async def test_a_role_grants_only_in_its_own_namespace(kube_api: KubeApiServer) -> None:
    kube_api.access = _access(
        [{"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["*"]}],
        role_namespace="other",
    )
    assert (await _call(kube_api, "POST", _JOBS, _job()))[0] == 403


async def test_resource_names_never_grant_create_and_subresources_are_their_own(
    kube_api: KubeApiServer,
) -> None:
    kube_api.access = _access(
        [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["env"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        ]
    )
    # The create request names no object: a rule with resourceNames cannot match it.
    assert (await _call(kube_api, "POST", _SECRETS, _secret()))[0] == 403
    status, body, _ = await _call(kube_api, "GET", "/api/v1/namespaces/default/pods/p/log")
    assert status == 403 and 'cannot get resource "pods/log"' in body["message"]


@pytest.mark.parametrize(
    "content_type, status",
    [
        # What kubernetes-client labels a dict by default: not a list of operations.
        ("application/json-patch+json", 400),
        # Custom resources have no patch strategies.
        ("application/strategic-merge-patch+json", 415),
        ("application/merge-patch+json", 200),
    ],
)
async def test_a_custom_resource_patch_takes_merge_or_json_patches_only(
    kube_api: KubeApiServer, content_type: str, status: int
) -> None:
    assert (await _call(kube_api, "POST", _JOBS, _job()))[0] == 201
    patch = {"spec": {"runPolicy": {"suspend": True}}}

    answer, body, _ = await _call(
        kube_api, "PATCH", f"{_JOBS}/demo", patch, headers={"Content-Type": content_type}
    )

    assert answer == status
    assert kube_api.job("demo")["spec"].get("runPolicy", {}).get("suspend") is (
        True if status == 200 else None
    )
    if status == 200:
        assert body["metadata"]["generation"] == 2
