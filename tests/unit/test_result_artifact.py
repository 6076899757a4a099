"""The result artifact: a URI to copy, a presigned link where the store signs one, keys that
Prefect accepts and every run of a job shares."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prefect.client.schemas.actions import ArtifactCreate

from gpuflow.pipeline.result import (
    ResultLink,
    artifact_key,
    costs_key,
    result_markdown,
    video_key,
)


@pytest.mark.parametrize(
    ("parts", "key"),
    [
        (("video", "i2v"), "video-i2v"),
        (("video", "wan-i2v"), "video-wan-i2v"),
        (("batch", "Nightly_Run.2026"), "batch-nightly-run-2026"),
        (("costs", "Job  With Spaces!"), "costs-job-with-spaces"),
    ],
)
def test_artifact_keys_follow_prefects_rule(parts: tuple[str, ...], key: str) -> None:
    assert artifact_key(*parts) == key
    # Prefect's own validation of a key (lowercase letters, numbers, dashes) accepts it.
    assert ArtifactCreate(key=artifact_key(*parts), type="markdown", data="x").key == key


def test_every_run_of_a_job_shares_its_keys() -> None:
    assert video_key("i2v") == video_key("i2v") != video_key("wan-i2v")
    assert costs_key("i2v") == "costs-i2v"


def test_a_file_result_shows_the_uri_and_path_to_copy_and_no_link() -> None:
    text = result_markdown("file:///data/store/outputs/r1/video.mp4", "320x192 video", None)
    assert "URI: `file:///data/store/outputs/r1/video.mp4`" in text
    assert "Local path: `/data/store/outputs/r1/video.mp4`" in text
    assert "](" not in text, "a file:// link the browser would block"


def test_an_s3_result_has_the_uri_and_the_presigned_link_with_its_expiry() -> None:
    link = ResultLink.valid_for(
        "https://bucket.s3.amazonaws.com/r1/video.mp4?X-Amz-Signature=abc",
        3600,
        now=datetime(2026, 12, 3, 8, 0, tzinfo=UTC),
    )
    text = result_markdown("s3://bucket/r1/video.mp4", "832x480 video", link)
    assert "URI: `s3://bucket/r1/video.mp4`" in text
    assert (
        "[Download the video](https://bucket.s3.amazonaws.com/r1/video.mp4?X-Amz-Signature=abc)"
        " (a presigned link, valid until 2026-12-03 09:00 UTC)"
    ) in text
    assert "Local path" not in text
