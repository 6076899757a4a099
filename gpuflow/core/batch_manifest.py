"""Batch manifests: one request per line (JSON Lines) or per row (CSV), validated whole.

Every line is validated before anything runs, and every bad line is reported with its
line number. A request's key (a hash of its validated content, plus its occurrence
number when the same request appears twice) lets a rerun recognise what already ran.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gpuflow.core.errors import RequestError
from gpuflow.core.request import VideoRequest, parse_request

ManifestFormat = Literal["jsonl", "csv"]
_FORMATS: dict[str, ManifestFormat] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# A manifest's errors are listed in full up to this many lines, then counted.
_LISTED_PROBLEMS = 50


class BatchManifestError(RequestError):
    """The manifest cannot run as it is; names every bad line (or the file at fault)."""


@dataclass(frozen=True)
class ManifestEntry:
    line: int
    key: str
    request: VideoRequest


@dataclass(frozen=True)
class ManifestProblem:
    line: int
    error: str


@dataclass
class Manifest:
    entries: list[ManifestEntry] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)

    def problems_text(self) -> str:
        listed = [f"line {p.line}: {p.error}" for p in self.problems[:_LISTED_PROBLEMS]]
        if len(self.problems) > _LISTED_PROBLEMS:
            listed.append(f"... and {len(self.problems) - _LISTED_PROBLEMS} more bad line(s)")
        return "\n".join(listed)

    def require_valid(self, location: str) -> None:
        if self.problems:
            raise BatchManifestError(
                f"manifest {location} has {len(self.problems)} invalid line(s); nothing was "
                f"run (pass skip_invalid to run the valid ones):\n{self.problems_text()}"
            )


def manifest_format(location: str) -> ManifestFormat:
    suffix = Path(location.rstrip("/")).suffix.lower()
    if suffix not in _FORMATS:
        raise BatchManifestError(
            f"manifest {location!r}: unknown format {suffix or '(no suffix)'!r}; "
            "name it *.jsonl (one JSON request per line) or *.csv (a header of field names)"
        )
    return _FORMATS[suffix]


def request_key(request: VideoRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _jsonl_rows(text: str) -> list[tuple[int, Any, str | None]]:
    rows: list[tuple[int, Any, str | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line), None))
        except json.JSONDecodeError as exc:
            rows.append((number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
    return rows


def _csv_rows(text: str) -> list[tuple[int, Any, str | None]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, Any, str | None]] = []
    for record in reader:
        if None in record:
            rows.append((reader.line_num, None, "more cells than header columns"))
            continue
        data: dict[str, Any] = {}
        for column, cell in record.items():
            if cell is None or cell == "":
                continue
            # model.name / model.revision columns fill the nested model reference.
            parent, _, child = column.partition(".")
            if child:
                data.setdefault(parent, {})[child] = cell
            else:
                data[column] = cell
        rows.append((reader.line_num, data, None))
    return rows


def parse_manifest(text: str, fmt: ManifestFormat) -> Manifest:
    """Every line validated: the good ones as entries, the bad ones as problems."""
    manifest = Manifest()
    occurrences: dict[str, int] = {}
    try:
        rows = _jsonl_rows(text) if fmt == "jsonl" else _csv_rows(text)
    except csv.Error as exc:
        raise BatchManifestError(f"the CSV manifest cannot be read: {exc}") from None
    for line, data, error in rows:
        if error is not None:
            manifest.problems.append(ManifestProblem(line, error))
            continue
        if not isinstance(data, dict):
            manifest.problems.append(
                ManifestProblem(line, f"expected a JSON object, got {type(data).__name__}")
            )
            continue
        try:
            request = parse_request(data)
        except RequestError as exc:
            manifest.problems.append(ManifestProblem(line, str(exc)))
            continue
        digest = request_key(request)
        occurrences[digest] = occurrences.get(digest, 0) + 1
        key = digest if occurrences[digest] == 1 else f"{digest}-{occurrences[digest]}"
        manifest.entries.append(ManifestEntry(line, key, request))
    if not manifest.entries and not manifest.problems:
        raise BatchManifestError("the manifest holds no requests")
    return manifest
