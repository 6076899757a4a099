"""The ``gpuflow-janitor`` flow: a prefect.yaml entrypoint."""

from gpuflow.pipeline.janitor import janitor

__all__ = ["janitor"]
