"""The ``generate-video`` flow: a prefect.yaml entrypoint."""

from gpuflow.pipeline.generate_video import generate_video

__all__ = ["generate_video"]
