"""Manifest parsing: every line validated, every bad line reported with its number."""

from __future__ import annotations

import json

import pytest

from gpuflow.core.batch_manifest import BatchManifestError, manifest_format, parse_manifest

GOOD = {"prompt": "zoom in", "image_uri": "file:///store/cat.png"}


def test_jsonl_reports_every_bad_line_with_its_number() -> None:
    lines = [
        json.dumps(GOOD),
        "",
        "{not json",
        json.dumps({**GOOD, "num_frames": 12}),
        json.dumps(["a", "list"]),
        json.dumps({**GOOD, "seed": 7}),
        json.dumps({**GOOD, "colour": "red"}),
    ]
    manifest = parse_manifest("\n".join(lines), "jsonl")
    assert [entry.line for entry in manifest.entries] == [1, 6]
    problems = {problem.line: problem.error for problem in manifest.problems}
    assert set(problems) == {3, 4, 5, 7}
    assert "not valid JSON" in problems[3]
    assert "num_frames 12 is not of the form 4n+1" in problems[4]
    assert "expected a JSON object" in problems[5]
    assert "colour" in problems[7]
    with pytest.raises(BatchManifestError) as refused:
        manifest.require_valid("batch.jsonl")
    text = str(refused.value)
    assert "4 invalid line(s); nothing was run" in text
    assert all(f"line {n}:" in text for n in (3, 4, 5, 7))


def test_csv_with_nested_model_columns_and_line_numbers() -> None:
    text = (
        "prompt,image_uri,num_frames,model.name,model.revision\n"
        "pan left,file:///s/a.png,9,wan,v2\n"
        "pan right,file:///s/b.png,,,\n"
        "bad,file:///s/c.png,10,,\n"
    )
    manifest = parse_manifest(text, "csv")
    assert [(e.line, e.request.num_frames) for e in manifest.entries] == [(2, 9), (3, 17)]
    assert manifest.entries[0].request.model.name == "wan"
    assert [p.line for p in manifest.problems] == [4]


def test_identical_requests_get_distinct_stable_keys() -> None:
    text = "\n".join([json.dumps(GOOD), json.dumps(GOOD), json.dumps({**GOOD, "seed": 1})])
    first = [entry.key for entry in parse_manifest(text, "jsonl").entries]
    again = [entry.key for entry in parse_manifest(text, "jsonl").entries]
    assert first == again
    assert len(set(first)) == 3
    assert first[1] == f"{first[0]}-2"


@pytest.mark.parametrize("name", ["batch.txt", "batch", "s3://b/batch.json"])
def test_unknown_formats_are_named(name: str) -> None:
    with pytest.raises(BatchManifestError, match="unknown format"):
        manifest_format(name)


def test_an_empty_manifest_is_an_error() -> None:
    with pytest.raises(BatchManifestError, match="no requests"):
        parse_manifest("\n\n", "jsonl")
