"""RBAC authorization as kube-apiserver 1.33 does it, for the test API server.

Modeled on Kubernetes 1.33 (``release-1.33``): the request's attributes as
``apiserver/pkg/endpoints/request/requestinfo.go`` reads them from the method and path
(verb, API group, resource, subresource, name, namespace), the rule match of
``pkg/apis/rbac/v1/evaluation_helpers.go`` (``VerbMatches``, ``APIGroupMatches``,
``ResourceMatches`` on the combined ``resource/subresource``, ``ResourceNameMatches`` —
so a rule with ``resourceNames`` never grants ``create``, whose request has no name),
Roles applying in their own namespace through RoleBindings and ClusterRoles everywhere
through ClusterRoleBindings, and the refusal of
``apiserver/pkg/endpoints/handlers/responsewriters/errors.go`` (403 ``Forbidden``,
``forbiddenMessage``). Nothing here imports the code under test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.support.kube_semantics import ApiRejection

_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclass(frozen=True)
class RequestAttributes:
    verb: str
    api_group: str
    resource: str
    subresource: str
    name: str
    namespace: str

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> RequestAttributes:
    """``/api/v1/...`` (core) or ``/apis/<group>/<version>/...``, then
    ``[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]``."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource, name, subresource = [*rest, "", "", ""][:3]
    watch = query.get("watch", "").lower() in ("true", "1")
    if method == "GET":
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return RequestAttributes(verb, group, resource, subresource, name, namespace)


def _rule_allows(rule: Mapping[str, Any], request: RequestAttributes) -> bool:
    verbs, groups = rule.get("verbs", []), rule.get("apiGroups", [])
    resources, names = rule.get("resources", []), rule.get("resourceNames", [])
    return (
        ("*" in verbs or request.verb in verbs)
        and ("*" in groups or request.api_group in groups)
        and (
            "*" in resources
            or request.combined_resource in resources
            or (bool(request.subresource) and f"*/{request.subresource}" in resources)
        )
        and (not names or request.name in names)
    )


class RoleBasedAccess:
    """What one service account may do, from Role, ClusterRole and binding manifests."""

    def __init__(self, manifests: list[dict[str, Any]], namespace: str, account: str) -> None:
        self.user = f"system:serviceaccount:{namespace}:{account}"
        roles = {
            (m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"]): m
            for m in manifests
            if m["kind"] in ("Role", "ClusterRole")
        }
        # (namespace the rules apply in, "" for everywhere, rules)
        self.grants: list[tuple[str, list[dict[str, Any]]]] = []
        for binding in manifests:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            if not any(
                subject.get("kind") == "ServiceAccount"
                and subject.get("name") == account
                and subject.get("namespace") == namespace
                for subject in binding.get("subjects", [])
            ):
                continue
            ref = binding["roleRef"]
            bound_in = binding["metadata"].get("namespace", "")
            role_namespace = bound_in if ref["kind"] == "Role" else ""
            role = roles.get((ref["kind"], role_namespace, ref["name"]))
            if role is not None:
                self.grants.append((bound_in, role.get("rules", [])))

    def authorize(self, request: RequestAttributes) -> None:
        for applies_in, rules in self.grants:
            if applies_in and applies_in != request.namespace:
                continue
            if any(_rule_allows(rule, request) for rule in rules):
                return
        raise self._forbidden(request)

    def _forbidden(self, request: RequestAttributes) -> ApiRejection:
        where = (
            f'in the namespace "{request.namespace}"'
            if request.namespace
            else "at the cluster scope"
        )
        reason = (
            f'User "{self.user}" cannot {request.verb} resource "{request.combined_resource}" '
            f'in API group "{request.api_group}" {where}'
        )
        qualified = (
            f"{request.resource}.{request.api_group}" if request.api_group else request.resource
        )
        subject = f'{qualified} "{request.name}"' if request.name else qualified
        return ApiRejection(403, "Forbidden", f"{subject} is forbidden: {reason}")
