"""The artifacts a run ends with: where its video is (a URI to copy and, for stores that
sign links, an https link a browser opens) and what it cost, under keys shared by every run
of a job so the UI lists their versions side by side."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gpuflow.storage.uri import ObjectUri

# Prefect's rule for artifact keys (prefect.types.names.ArtifactKey).
_NOT_IN_A_KEY = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from ``parts``: lowercase letters, digits and dashes only,
    every other run of characters one dash."""
    return _NOT_IN_A_KEY.sub("-", "-".join(parts).lower()).strip("-")


def video_key(job: str) -> str:
    return artifact_key("video", job)


def costs_key(job: str) -> str:
    return artifact_key("costs", job)


@dataclass(frozen=True)
class ResultLink:
    url: str
    expires_at: datetime

    @classmethod
    def valid_for(cls, url: str, expires_s: int, now: datetime | None = None) -> ResultLink:
        return cls(url, (now or datetime.now(UTC)) + timedelta(seconds=expires_s))


def result_markdown(uri: str, title: str, link: ResultLink | None) -> str:
    """The result artifact: the URI as code (a browser blocks ``file://`` links from the UI's
    http page, so it is there to copy), the local path of a ``file://`` result, and the
    presigned link with its expiry when the store signs one."""
    lines = [f"### {title}", "", f"URI: `{uri}`"]
    parsed = ObjectUri.parse(uri)
    if parsed.scheme == "file":
        lines += ["", f"Local path: `{parsed.key}` (copy it; browsers do not open file:// links)"]
    if link is not None:
        expiry = link.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        lines += ["", f"[Download the video]({link.url}) (a presigned link, valid until {expiry})"]
    return "\n".join(lines) + "\n"
