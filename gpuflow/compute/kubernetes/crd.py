"""The PyTorchJob CRD's schema: what the API server accepts, checked before sending.

:func:`validate_against_crd` checks a manifest against the CRD's openAPIV3Schema the
way the API server would (types, enums, required fields) and also refuses fields the
schema does not know, which the server would otherwise prune without a word.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema

from gpuflow.compute.kubernetes.manifest import VERSION, KubernetesConfigError


def crd_schema(crd: Mapping[str, Any], version: str = VERSION) -> dict[str, Any]:
    """The openAPIV3Schema of ``version`` in a CustomResourceDefinition document."""
    for served in crd.get("spec", {}).get("versions", []):
        if served.get("name") == version:
            schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
            return schema
    raise KubernetesConfigError(
        f"CRD {crd.get('metadata', {}).get('name')!r} has no version {version!r}"
    )


def validate_against_crd(manifest: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise :class:`KubernetesConfigError` naming each place ``manifest`` breaks ``schema``."""
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]
    problems += [f"{path}: unknown field" for path in _unknown_fields(manifest, schema, "")]
    if problems:
        raise KubernetesConfigError(
            "PyTorchJob does not match the CRD schema:\n" + "\n".join(problems)
        )


def _unknown_fields(value: Any, schema: Mapping[str, Any], path: str) -> Iterator[str]:
    """Fields the structural schema would prune (the API server drops them silently)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if properties is not None and key in properties:
                yield from _unknown_fields(item, properties[key], child)
            elif isinstance(additional, dict):
                yield from _unknown_fields(item, additional, child)
            elif properties is not None and not (path == "" and key in ("apiVersion", "kind")):
                yield child
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}[{index}]")
