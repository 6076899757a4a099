"""The ``prebuild-environments`` flow: a prefect.yaml entrypoint."""

from gpuflow.pipeline.prebuild import prebuild_environments

__all__ = ["prebuild_environments"]
