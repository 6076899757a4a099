"""The request a user makes: validated at the edge, before anything is downloaded."""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpuflow.core.errors import RequestError

_RESOLUTION = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_OR_EMPTY = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"
_MIN_SIDE, _MAX_SIDE, _SIDE_STEP = 64, 1920, 16
_MAX_FRAMES = 241
# A bound against typos (`--gpus 800`), not a capacity: the stack's GPU limits are the real
# cap, and `gpuflow submit` checks them first so the user learns the cap, not this bound.
MAX_GPUS_PER_REQUEST = 64

# The rules the validators below enforce, also written into the JSON schema: Prefect's
# `enforce_parameter_schema` then refuses a bad value when a run is created (UI form, API,
# `prefect deployment run`), not minutes later on a worker. The validators stay the
# authority in Python, for their messages naming the rule.
_SIDE = "|".join(str(side) for side in range(_MIN_SIDE, _MAX_SIDE + 1, _SIDE_STEP))
_RESOLUTION_SCHEMA = {"pattern": f"^({_SIDE})x({_SIDE})$"}
_FRAMES_SCHEMA = {"enum": list(range(1, _MAX_FRAMES + 1, 4))}
# A scheme and something after it: what every store's URIs look like (s3://, file:///, https://).
_URI_SCHEMA = {"pattern": r"^[A-Za-z][A-Za-z0-9+.-]*://.+$"}

# Characters no value may carry into argv, files or manifests: NUL (argv cannot hold it),
# the other C0 and C1 controls and DEL (terminal escapes, line tricks); pydantic already
# refuses lone surrogates. A prompt may hold tabs and line breaks; a URI may not.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_SPACING = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _refuse_control_characters(field: str, value: str, forbidden: re.Pattern[str]) -> str:
    found = forbidden.search(value)
    if found:
        raise ValueError(
            f"{field} holds the control character {found.group()!r} at offset {found.start()}"
        )
    return value


class Priority(enum.StrEnum):
    """The work queue a run waits in: high first, then normal, then batch."""

    HIGH = "high"
    NORMAL = "normal"
    BATCH = "batch"


class ModelRef(BaseModel):
    """A model in the cache: ``models/<name>/<revision>/`` on the NAS."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, Field(pattern=_NAME, description="Model name, e.g. wan2.2-i2v-a14b.")]
    revision: Annotated[str, Field(pattern=_NAME, description="Model revision or version tag.")]

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}"


class VideoRequest(BaseModel):
    """One image-to-video request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: Annotated[
        str,
        Field(
            min_length=1,
            max_length=4000,
            description=(
                "What should happen in the video, in plain words (1 to 4000 characters), e.g. "
                "'the cat slowly turns its head toward the window'."
            ),
        ),
    ]
    image_uri: Annotated[
        str,
        Field(
            min_length=1,
            description=(
                "Object URI of the input image that the stack's stores serve: s3://bucket/cat.png, "
                "https://host/cat.png, or file:///... inside the embedded store "
                "(`gpuflow submit --image-uri ./cat.png` uploads a local file first)."
            ),
            json_schema_extra=_URI_SCHEMA,
        ),
    ]
    resolution: Annotated[
        str,
        Field(
            description=(
                "Video size in pixels as WIDTHxHEIGHT, both multiples of 16 from 64 to 1920, "
                "e.g. 832x480 (480p) or 1280x720 (720p)."
            ),
            json_schema_extra=_RESOLUTION_SCHEMA,
        ),
    ] = "320x192"
    num_frames: Annotated[
        int,
        Field(
            ge=1,
            le=_MAX_FRAMES,
            description=(
                "Frames to generate, of the form 4n+1 (Wan-style models need it) from 1 to 241, "
                "e.g. 81: about 5 seconds at 16 fps."
            ),
            json_schema_extra=_FRAMES_SCHEMA,
        ),
    ] = 17
    fps: Annotated[
        int,
        Field(
            ge=1,
            le=60,
            description=(
                "Frames per second of the video, 1 to 60, e.g. 16; the video lasts "
                "num_frames / fps seconds."
            ),
        ),
    ] = 16
    seed: Annotated[
        int,
        Field(
            ge=0,
            lt=2**32,
            description=(
                "Random seed, 0 to 4294967295, e.g. 42: the same seed and inputs give the same "
                "video."
            ),
        ),
    ] = 0
    priority: Annotated[
        Priority,
        Field(
            description=(
                "Work queue the run waits in: high (served first: someone is waiting), normal, "
                "or batch (served last: bulk and nightly runs), e.g. high."
            )
        ),
    ] = Priority.NORMAL
    gpus: Annotated[
        int,
        Field(
            ge=1,
            description=(
                "GPUs the job needs, all replicas together, e.g. 1, or 8 for two nodes of 4; "
                "at most what the stack's GPU limit holds."
            ),
            json_schema_extra={"maximum": MAX_GPUS_PER_REQUEST},
        ),
    ] = 1
    gpu_type: Annotated[
        str,
        Field(
            pattern=_NAME_OR_EMPTY,
            description=(
                "GPU type the job must run on, as the stack's per-type GPU limits name it, "
                "e.g. h100 or a100; empty means any type."
            ),
        ),
    ] = ""
    job: Annotated[
        str, Field(pattern=_NAME, description="Job definition: a uv project under jobs/.")
    ] = "i2v"
    model: ModelRef = ModelRef(name="wan2.2-i2v-standin", revision="v1")

    @field_validator("gpu_type", mode="before")
    @classmethod
    def _no_gpu_type_is_any(cls, value: object) -> object:
        # Requests written before the field became a plain string say "any" with null.
        return "" if value is None else value

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        return _refuse_control_characters("prompt", value, _CONTROL)

    @field_validator("image_uri")
    @classmethod
    def _check_image_uri(cls, value: str) -> str:
        return _refuse_control_characters("image_uri", value, _CONTROL_OR_SPACING)

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, value: str) -> str:
        match = _RESOLUTION.match(value)
        if not match:
            raise ValueError(f"resolution {value!r} is not WIDTHxHEIGHT (e.g. 832x480)")
        for axis, pixels in zip(("width", "height"), map(int, match.groups()), strict=True):
            if not _MIN_SIDE <= pixels <= _MAX_SIDE or pixels % _SIDE_STEP:
                raise ValueError(
                    f"resolution {value!r}: {axis} {pixels} must be a multiple of 16 "
                    "between 64 and 1920"
                )
        return value

    @field_validator("num_frames")
    @classmethod
    def _check_frames(cls, value: int) -> int:
        if (value - 1) % 4:
            raise ValueError(
                f"num_frames {value} is not of the form 4n+1 (e.g. {value - (value - 1) % 4} "
                f"or {value - (value - 1) % 4 + 4})"
            )
        return value

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: int) -> int:
        if value > MAX_GPUS_PER_REQUEST:
            raise ValueError(
                f"gpus {value} is more than {MAX_GPUS_PER_REQUEST}, the most one request may "
                "ask for (gpuflow's sanity bound on a request, whatever the GPU limits hold)"
            )
        return value

    @property
    def width(self) -> int:
        return int(self.resolution.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.resolution.split("x")[1])

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def parse_request(data: object) -> VideoRequest:
    """A validated request, or a ``RequestError`` that names every bad field and value."""
    from pydantic import ValidationError

    if isinstance(data, VideoRequest):
        return data
    try:
        return VideoRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise RequestError(f"invalid request: {problems}") from None
