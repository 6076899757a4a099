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
