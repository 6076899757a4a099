"""Skipping a test for a missing service, or failing it where services are required.

On a developer's machine a test that needs PostgreSQL, Redis, Docker or a tool the
project installs skips when that is not there. CI sets ``GPUFLOW_REQUIRE_SERVICES=1``
(``.ci/run``): there every such skip is a failure, so the ``-ra`` summary of a CI run
shows only the skips no CI machine can avoid (a real cluster, cloud account, bucket or
GPU), and a service that went missing cannot turn tests green by not running them.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_SERVICES_ENV = "GPUFLOW_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(REQUIRE_SERVICES_ENV, "").strip() == "1"


def service_missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when ``GPUFLOW_REQUIRE_SERVICES=1``."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVICES_ENV}=1: a missing service is a failure)")
    pytest.skip(reason)
