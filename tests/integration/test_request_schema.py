"""A bad request is refused where it is made: the server checks the deployment's parameter
schema (`enforce_parameter_schema`) when a run is created, before any worker sees it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.utilities.callables import parameter_schema

from gpuflow.ops.local_server import LocalServer
from gpuflow.pipeline.generate_video import generate_video
from tests.support.deployed import Deployed

pytestmark = pytest.mark.integration

GOOD_REQUEST: dict[str, Any] = {
    "prompt": "pan left over the hills",
    "image_uri": "s3://bucket/cat.png",
    "resolution": "128x96",
    "num_frames": 9,
}


async def _create_run(request: dict[str, Any]) -> tuple[int, str]:
    """The status and detail of creating a run of an enforcing deployment of the real flow."""
    async with get_client() as client:
        flow_id = await client.create_flow_from_name(generate_video.name)
        deployment_id = await client.create_deployment(
            flow_id,
            name=f"schema-{uuid.uuid4().hex[:8]}",
            parameter_openapi_schema=parameter_schema(generate_video).model_dump(
                exclude_unset=True
            ),
            enforce_parameter_schema=True,
        )
        try:
            await client.create_flow_run_from_deployment(
                deployment_id, parameters={"request": request, "stack": "default"}
            )
        except PrefectHTTPStatusError as exc:
            return exc.response.status_code, str(exc.response.json().get("detail"))
        return 201, ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resolution", "100x100"),  # not multiples of 16
        ("resolution", "4096x480"),  # wider than 1920
        ("num_frames", 18),  # not 4n+1
        ("image_uri", "./cat.png"),  # no scheme: no store serves it
        ("priority", "urgent"),
        ("gpus", 0),
    ],
)
def test_the_server_refuses_a_bad_value_naming_the_field(
    prefect_server: LocalServer, field: str, value: object
) -> None:
    status, detail = asyncio.run(_create_run({**GOOD_REQUEST, field: value}))
    # Prefect answers a parameter-schema violation with 409 (deployments.py,
    # create_flow_run_from_deployment), a malformed body with 422.
    assert status == 409, detail
    assert field in detail
    assert str(value) in detail


def test_the_server_accepts_a_good_request(prefect_server: LocalServer) -> None:
    assert asyncio.run(_create_run(GOOD_REQUEST)) == (201, "")


def test_the_deployed_form_describes_priority_and_gpu_type_as_plain_fields(
    deployed: Deployed,
) -> None:
    """The schema the server holds for the deployment `prefect deploy` made: what the UI's
    custom-run form renders."""

    async def deployed_schema() -> dict[str, Any]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(
                "generate-video/generate-video-process"
            )
            return deployment.parameter_openapi_schema or {}

    schema = asyncio.run(deployed_schema())
    fields = schema["definitions"]["VideoRequest"]["properties"]
    priority = fields["priority"]
    assert priority["default"] == "normal"
    assert "high (served first" in priority["description"]
    assert "batch (served last" in priority["description"]
    gpu_type = fields["gpu_type"]
    assert gpu_type["type"] == "string" and gpu_type["default"] == ""
    assert "anyOf" not in gpu_type, "a nullable field renders as type None in the form"
    assert "e.g. h100" in gpu_type["description"]
    assert "empty means any type" in gpu_type["description"]
    for name in ("resolution", "num_frames", "fps", "seed", "gpus", "prompt"):
        assert "e.g." in fields[name]["description"], name
    assert "pixels" in fields["resolution"]["description"]
    assert "seconds" in fields["num_frames"]["description"]


def test_the_server_takes_an_empty_gpu_type_as_any_and_refuses_a_bad_one(
    prefect_server: LocalServer,
) -> None:
    assert asyncio.run(_create_run({**GOOD_REQUEST, "gpu_type": ""})) == (201, "")
    status, detail = asyncio.run(_create_run({**GOOD_REQUEST, "gpu_type": "h100 x"}))
    assert (status, "gpu_type" in detail) == (409, True), detail
