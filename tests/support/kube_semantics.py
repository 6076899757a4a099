"""What kube-apiserver 1.33 checks and does on its own, for the test API server.

Modeled on the Kubernetes 1.33 API server (kubernetes/kubernetes ``release-1.33``:
``apimachinery/pkg/api/validation/objectmeta.go`` and ``util/validation`` for names and
labels, ``apiserver/pkg/storage/names`` for ``generateName``, ``apiextensions-apiserver``'s
structural pruning and ``fieldValidation`` handling for custom resources,
``core/validation`` for Secrets) and on the API concepts docs (watch semantics, field
validation, cascading deletion). Nothing here imports the code under test: a PyTorchJob
is checked against the CRD's openAPIV3Schema by ``jsonschema`` and a pruning walk of our
own, core objects by ``kubernetes-validate``'s schemas of Kubernetes 1.33.

Not modeled: CEL rules (``x-kubernetes-validations``; the PyTorchJob CRD's one rule is
about updates, which the backend never sends), admission webhooks, defaulting.
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.33.0"

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_SUBDOMAIN_MAX = 253
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_MAX = 63
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# apiserver/pkg/storage/names: 5 random characters from utilrand's alphabet, after a
# prefix cut to 63 - 5 characters.
_GENERATED_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_GENERATED_SUFFIX_LENGTH = 5
_GENERATE_PREFIX_MAX = 63 - _GENERATED_SUFFIX_LENGTH
FIELD_VALIDATIONS = ("Ignore", "Warn", "Strict")
DEFAULT_FIELD_VALIDATION = "Warn"  # the default since 1.27 (ServerSideFieldValidation GA)


class ApiRejection(Exception):
    """A request the API server refuses, as the ``Status`` it answers with."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "reason": self.reason,
            "message": self.message,
            "code": self.code,
        }


def invalid(kind: str, name: str, problems: list[str]) -> ApiRejection:
    return ApiRejection(422, "Invalid", f'{kind} "{name}" is invalid: [{", ".join(problems)}]')


# ---- authentication -------------------------------------------------------------------


def authenticate(authorization: str | None, token: str) -> None:
    """A request without the bearer token is 401 (no anonymous access, as on a cluster
    started with ``--anonymous-auth=false`` or whose RBAC grants anonymous nothing)."""
    if authorization != f"Bearer {token}":
        raise ApiRejection(401, "Unauthorized", "Unauthorized")


# ---- object metadata ------------------------------------------------------------------


def _subdomain_problems(path: str, value: str) -> list[str]:
    problems = []
    if len(value) > _SUBDOMAIN_MAX:
        problems.append(
            f'{path}: Invalid value: "{value}": must be no more than {_SUBDOMAIN_MAX} characters'
        )
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(
            f'{path}: Invalid value: "{value}": a lowercase RFC 1123 subdomain must consist of '
            "lower case alphanumeric characters, '-' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'example.com', regex used for validation is "
            f"'{_DNS1123_SUBDOMAIN.pattern}')"
        )
    return problems


def _label_problems(labels: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix:
            problems += _subdomain_problems(f"metadata.labels[{key}]", prefix)
        if len(name) > _LABEL_MAX or not _QUALIFIED_NAME.fullmatch(name):
            problems.append(
                f'metadata.labels: Invalid value: "{key}": name part must consist of '
                "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                f"alphanumeric character, at most {_LABEL_MAX} characters"
            )
        if not isinstance(value, str):
            problems.append(f"metadata.labels[{key}]: Invalid value: {value!r}: must be a string")
        elif len(value) > _LABEL_MAX or not _LABEL_VALUE.fullmatch(value):
            problems.append(
                f'metadata.labels: Invalid value: "{value}": a valid label must be an empty '
                "string or consist of alphanumeric characters, '-', '_' or '.', and must "
                f"start and end with an alphanumeric character, at most {_LABEL_MAX} characters"
            )
    return problems


def admit_metadata(kind: str, obj: dict[str, Any], namespace: str) -> str:
    """Name (generating one from ``generateName``), namespace and labels of a create, as
    ``ValidateObjectMeta`` checks them; returns the object's name."""
    metadata = obj.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise ApiRejection(400, "BadRequest", "metadata must be an object")
    declared = metadata.get("namespace")
    if declared not in (None, "", namespace):
        raise ApiRejection(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )
    metadata["namespace"] = namespace
    name = metadata.get("name") or ""
    if not name and metadata.get("generateName"):
        prefix = str(metadata["generateName"])[:_GENERATE_PREFIX_MAX]
        suffix = "".join(
            secrets.choice(_GENERATED_SUFFIX_ALPHABET) for _ in range(_GENERATED_SUFFIX_LENGTH)
        )
        name = metadata["name"] = prefix + suffix
    if not name:
        raise invalid(kind, "", ["metadata.name: Required value: name or generateName is required"])
    problems = _subdomain_problems("metadata.name", name)
    problems += _label_problems(metadata.get("labels") or {})
    if problems:
        raise invalid(kind, name, problems)
    return str(name)


# ---- field validation -----------------------------------------------------------------


def field_validation(query: Mapping[str, str]) -> str:
    directive = query.get("fieldValidation", DEFAULT_FIELD_VALIDATION) or DEFAULT_FIELD_VALIDATION
    if directive not in FIELD_VALIDATIONS:
        raise ApiRejection(
            400,
            "BadRequest",
            f'fieldValidation must be one of "Ignore", "Warn", or "Strict", got "{directive}"',
        )
    return directive


def unknown_field_warnings(kind: str, unknown: list[str], directive: str) -> list[str]:
    """Strict refuses unknown fields (400, as a strict decoding error); Warn answers with a
    ``Warning`` header per field; Ignore drops them silently."""
    if not unknown:
        return []
    if directive == "Strict":
        fields = ", ".join(f'unknown field "{path}"' for path in unknown)
        raise ApiRejection(
            400,
            "BadRequest",
            f"{kind} in version cannot be handled: strict decoding error: {fields}",
        )
    if directive == "Warn":
        return [f'unknown field "{path}"' for path in unknown]
    return []


# ---- custom resources: structural pruning and the openAPIV3Schema ---------------------

_OBJECT_ROOT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})


def _prune(value: Any, schema: Mapping[str, Any], path: str, unknown: list[str]) -> Any:
    """Drop what the structural schema does not declare (recording the paths), and nulls
    where the schema is not ``nullable``, as the apiextensions-apiserver does."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key in list(value):
            child = f"{path}.{key}" if path else key
            if not path and key in _OBJECT_ROOT_FIELDS:
                continue  # ObjectMeta rules, not the CRD's schema, govern these
            if properties is not None and key in properties:
                sub = properties[key]
            elif isinstance(additional, Mapping):
                sub = additional
            else:
                unknown.append(child)
                del value[key]
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]
                continue
            value[key] = _prune(value[key], sub, child, unknown)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [
            _prune(item, schema["items"], f"{path}[{i}]", unknown) for i, item in enumerate(value)
        ]
    return value


def _int_or_string_problems(value: Any, schema: Mapping[str, Any], path: str) -> Iterator[str]:
    if schema.get("x-kubernetes-int-or-string") and (
        isinstance(value, bool) or not isinstance(value, int | str)
    ):
        yield f"{path}: Invalid value: {value!r}: must be an integer or a string"
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, item in value.items():
            if key in properties:
                yield from _int_or_string_problems(item, properties[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from _int_or_string_problems(item, schema["items"], f"{path}[{index}]")


def _openapi_to_jsonschema(schema: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema's null type; the rest is Draft 4."""
    if isinstance(schema, list):
        return [_openapi_to_jsonschema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    converted = {key: _openapi_to_jsonschema(item) for key, item in schema.items()}
    if converted.get("nullable") and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    return converted


@dataclass
class CustomResourceSchema:
    """One served version's openAPIV3Schema of a CRD."""

    kind: str
    openapi: dict[str, Any]
    _validator: jsonschema.Draft4Validator = field(init=False)

    def __post_init__(self) -> None:
        self._validator = jsonschema.Draft4Validator(_openapi_to_jsonschema(self.openapi))

    @classmethod
    def of(cls, crd: Mapping[str, Any], version: str) -> CustomResourceSchema:
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
        return cls(crd["spec"]["names"]["kind"], served["schema"]["openAPIV3Schema"])

    def admit(self, obj: dict[str, Any], directive: str) -> tuple[dict[str, Any], list[str]]:
        """The object as stored (pruned) and the warnings to answer with; raises the
        400 (strict decoding) or 422 (schema) the API server would answer."""
        pruned = copy.deepcopy(obj)
        unknown: list[str] = []
        _prune(pruned, self.openapi, "", unknown)
        warnings = unknown_field_warnings(self.kind, unknown, directive)
        problems = [
            f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: Invalid value: "
            f"{error.message}"
            for error in self._validator.iter_errors(pruned)
        ]
        problems += _int_or_string_problems(pruned, self.openapi, "")
        if problems:
            raise invalid(self.kind, str(pruned["metadata"]["name"]), problems)
        return pruned, warnings


# ---- core objects ---------------------------------------------------------------------


def admit_core(obj: dict[str, Any], directive: str) -> list[str]:
    """Types of a core object by Kubernetes 1.33's own schemas (kubernetes-validate), then
    its unknown fields by ``directive``; returns the warnings to answer with."""
    kind, name = obj.get("kind", "?"), obj.get("metadata", {}).get("name", "")
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=False)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path) or "<root>"
        raise invalid(kind, name, [f"{path}: Invalid value: {error.message}"]) from None
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        if error.validator != "additionalProperties":
            raise
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = ".".join(str(p) for p in error.path)
        unknown = [f"{prefix}.{key}" if prefix else key for key in extra]
        return unknown_field_warnings(kind, unknown, directive)
    return []


def write_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """A Secret as stored: ``stringData`` merged into ``data`` (base64), never kept —
    it is write-only and never read back (core/v1 Secret docs). Keys are checked."""
    name = secret.get("metadata", {}).get("name", "")
    string_data = secret.pop("stringData", None) or {}
    data = dict(secret.get("data") or {})
    data.update(
        {key: base64.b64encode(str(value).encode()).decode() for key, value in string_data.items()}
    )
    problems = [
        f'data[{key}]: Invalid value: "{key}": a valid config key must consist of alphanumeric '
        f"characters, '-', '_' or '.' (regex used for validation is '{_CONFIG_KEY.pattern}')"
        for key in data
        if not _CONFIG_KEY.fullmatch(key)
    ]
    if problems:
        raise invalid("Secret", name, problems)
    if data:
        secret["data"] = data
    return secret


# ---- patches ---------------------------------------------------------------------------

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# Strategic merge keys of the lists a test's patches touch (patchMergeKey in core/v1).
_STRATEGIC_MERGE_KEYS = {"ownerReferences": "uid", "env": "name", "containers": "name"}


def merge_patch(target: Any, patch: Any, strategic: bool = False, key: str = "") -> Any:
    """RFC 7386 JSON merge patch; ``strategic`` merges the lists with a merge key by it,
    as a strategic merge patch does (``$patch`` directives are not modeled)."""
    if isinstance(patch, list) and strategic and key in _STRATEGIC_MERGE_KEYS:
        merge_key = _STRATEGIC_MERGE_KEYS[key]
        merged = {item[merge_key]: item for item in (target or []) if isinstance(item, dict)}
        for item in patch:
            current = merged.get(item[merge_key])
            merged[item[merge_key]] = merge_patch(current, item, strategic)
        return list(merged.values())
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value, strategic, name)
    return result


def apply_patch(obj: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    if content_type == MERGE_PATCH:
        return dict(merge_patch(obj, patch))
    if content_type == STRATEGIC_MERGE_PATCH:
        return dict(merge_patch(obj, patch, strategic=True))
    raise ApiRejection(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f'{MERGE_PATCH}, {STRATEGIC_MERGE_PATCH} (got "{content_type}")',
    )


JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def apply_custom_resource_patch(obj: dict[str, Any], patch: Any, content_type: str) -> Any:
    """A patch of a custom resource: JSON merge patch or JSON patch, never a strategic merge
    patch (custom resources have no patch strategies: 415). A JSON patch body must be a list
    of operations; an object sent as one is a bad request — what kubernetes-client sends
    by default for a dict passed to ``patch_namespaced_custom_object`` (it picks the first
    content type it offers, ``application/json-patch+json``)."""
    if content_type == MERGE_PATCH:
        return merge_patch(obj, patch)
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise ApiRejection(
                400,
                "BadRequest",
                "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
            )
        return json_patch(obj, patch)
    raise ApiRejection(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}",
    )


def json_patch(obj: dict[str, Any], operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 add, replace, remove and test (move and copy are not modeled: 422)."""
    result: Any = copy.deepcopy(obj)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        keys = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
        parent = result
        for part in keys[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise ApiRejection(
                    422, "Invalid", f"the server rejected our request: missing path {path}"
                )
        last = keys[-1]
        if op == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != operation.get("value"):
                raise ApiRejection(422, "Invalid", f"the server rejected our request: test {path}")
        elif op in ("add", "replace") and isinstance(parent, dict):
            if op == "replace" and last not in parent:
                raise ApiRejection(
                    422, "Invalid", f"the server rejected our request: replace {path}: missing"
                )
            parent[last] = copy.deepcopy(operation.get("value"))
        elif op == "remove" and isinstance(parent, dict) and last in parent:
            del parent[last]
        else:
            raise ApiRejection(
                422, "Invalid", f"the server rejected our request: {op} {path} not supported"
            )
    return result


# ---- watches ---------------------------------------------------------------------------


def watch_starts_with_current_state(resource_version: str | None) -> bool:
    """A watch without ``resourceVersion`` (or with "0") begins with a synthetic ADDED per
    object that exists now, then the changes after it: it never replays history, so a
    deleted object never shows up ("Semantics for watch", API concepts)."""
    return resource_version in (None, "", "0")
