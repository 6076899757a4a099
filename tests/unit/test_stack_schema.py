"""The stack's JSON schema is generated once per process and handed out as copies."""

from __future__ import annotations

from prefect.blocks.core import Block

from gpuflow.pipeline.stack import GpuflowStack


def test_cached_schema_is_the_one_prefect_generates() -> None:
    generated = Block.model_json_schema.__func__(GpuflowStack)  # type: ignore[attr-defined]
    assert GpuflowStack.model_json_schema() == generated
    assert GpuflowStack.model_json_schema(by_alias=False) == (
        Block.model_json_schema.__func__(GpuflowStack, by_alias=False)  # type: ignore[attr-defined]
    )


def test_callers_cannot_change_the_cached_schema() -> None:
    first = GpuflowStack.model_json_schema()
    first["properties"].clear()
    first["secret_fields"].append("nas_root")
    second = GpuflowStack.model_json_schema()
    assert "nas_root" in second["properties"]
    assert "nas_root" not in second["secret_fields"]


def test_secret_fields_still_reach_prefect() -> None:
    secret_fields = GpuflowStack.model_json_schema()["secret_fields"]
    assert "admission_url" in secret_fields
    assert any(field.startswith("object_store.") for field in secret_fields)
