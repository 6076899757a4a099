"""The job image: what the container targets run their jobs in unless told otherwise.

``docker/job.Dockerfile`` builds it (docs/containers.md, "The job image"): the interpreter
the job environments on the NAS were built on, and what the GPU runtime needs. Its tag is
gpuflow's version, as the flow image's is.
"""

from __future__ import annotations

from importlib.metadata import version

JOB_IMAGE_NAME = "gpuflow-job"


def default_job_image() -> str:
    """``gpuflow-job:<gpuflow's version>``: where the cluster's nodes have it (a kind or
    single-node cluster that loaded the local build); elsewhere name it in your registry."""
    return f"{JOB_IMAGE_NAME}:{version('gpuflow')}"
