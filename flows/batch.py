"""The ``gpuflow-batch`` flow: a prefect.yaml entrypoint."""

from gpuflow.pipeline.batch import batch_generate

__all__ = ["batch_generate"]
