"""The postprocess step types a stack can list. A new step is a module and a line here."""

from __future__ import annotations

from gpuflow.postprocess.base import PostprocessStep
from gpuflow.postprocess.watermark import Watermark

POSTPROCESS_STEPS: tuple[type[PostprocessStep], ...] = (Watermark,)


def step_type(slug: str) -> type[PostprocessStep]:
    """The registered step type whose block type slug is ``slug``."""
    for step in POSTPROCESS_STEPS:
        if step.get_block_type_slug() == slug:
            return step
    known = ", ".join(step.get_block_type_slug() for step in POSTPROCESS_STEPS)
    raise ValueError(f"unknown postprocess step {slug!r} (known: {known})")
