"""The stop-code table against AWS's own list: the ECS service model botocore ships."""

from __future__ import annotations

import botocore.session

from gpuflow.compute.ecs.outcome import STOP_CODES


def test_every_stop_code_of_the_ecs_api_is_classed_and_no_other() -> None:
    model = botocore.session.get_session().get_service_model("ecs")
    assert set(STOP_CODES) == set(model.shape_for("TaskStopCode").enum)
