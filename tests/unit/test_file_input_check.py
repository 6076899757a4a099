"""`gpuflow submit` checks a file:// image_uri against the stack's saved settings before the
run exists: inside the stack's file:// store, and there on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpuflow.pipeline.submission import SubmissionError, check_file_input


def _settings(root: Path | None) -> dict[str, Any]:
    """A stack document as the server returns it (nested blocks inline, with their slug)."""
    s3 = {"bucket": "x", "block_type_slug": "gpuflow-s3-object-store"}
    if root is None:
        return {"object_store": s3, "model_store": None}
    return {
        "object_store": s3,
        "model_store": {"root": str(root), "block_type_slug": "gpuflow-local-object-store"},
    }


def test_a_file_in_the_store_passes_and_other_schemes_are_the_runs_to_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.png").write_bytes(b"png")
    check_file_input(_settings(tmp_path), "s", f"file://{tmp_path}/in/cat.png")
    check_file_input(_settings(None), "s", "s3://bucket/cat.png")


def test_a_missing_file_in_a_store_on_this_machine_is_refused(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/in/dog.png"
    with pytest.raises(SubmissionError) as refused:
        check_file_input(_settings(tmp_path), "s", uri)
    assert (
        str(refused.value)
        == f"image_uri {uri!r}: no such file in the stack's file:// store {tmp_path}"
    )


def test_a_path_outside_the_store_is_refused_naming_its_root(tmp_path: Path) -> None:
    with pytest.raises(
        SubmissionError, match=r"'file:///nonexist.png' is outside the stack's file:// store"
    ):
        check_file_input(_settings(tmp_path), "s", "file:///nonexist.png")
    with pytest.raises(SubmissionError, match=r"is outside the stack's file:// store"):
        check_file_input(_settings(tmp_path), "s", f"file://{tmp_path}/../escape.png")


def test_a_stack_without_a_file_store_refuses_file_uris() -> None:
    with pytest.raises(SubmissionError, match=r"stack 'prod' has no file:// store"):
        check_file_input(_settings(None), "prod", "file:///data/cat.png")


def test_a_store_root_on_another_machine_leaves_existence_to_the_run(tmp_path: Path) -> None:
    elsewhere = tmp_path / "not-mounted-here"
    check_file_input(_settings(elsewhere), "s", f"file://{elsewhere}/in/cat.png")
