# The job image: what a GPU job's container needs to run an environment that gpuflow
# built on the NAS (docs/containers.md, "The job image"). Job pods (PyTorchJob), ECS GPU
# tasks and containers of the docker pool mount the NAS at the same path as the flow and
# start the env's console script; the venv brings every Python package, and a CUDA
# torch brings the CUDA user-space libraries in its wheels. The image adds only:
#   - the interpreter the envs were built on: Debian's python3.11 at /usr/bin/python3.11,
#     the flow image's (docker/flow.Dockerfile), on the same BASE_IMAGE;
#   - tini, so a job gets SIGTERM and its children are reaped (ECS, docker; a Kubernetes
#     `command` replaces the entrypoint);
#   - NVIDIA_DRIVER_CAPABILITIES=compute,utility: the NVIDIA container toolkit (or the
#     device plugin's runtime) mounts the driver's libcuda and NVML only for the
#     capabilities an image asks for, and its default is utility alone.
# glibc, libstdc++, libgcc_s and zlib, which torch, cuDNN and triton link against, are
# in the base image already.
#
# Build from the repository root with BuildKit:
#   DOCKER_BUILDKIT=1 docker build -f docker/job.Dockerfile -t gpuflow-job:0.1.0 .
# The build reads nothing from the repository (no COPY) and fetches only Debian
# packages, over the base image's own apt sources.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE}
# The interpreter contract: envs record the executable their venv links to, and every
# image that runs them must have it at that path (gpuflow.compute.interpreter_check
# refuses the job, naming both, where it does not).
ARG PYTHON_VERSION=3.11
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Debian's current packages of its release, as in the flow image: the contract is the
# path and the minor version, which a security update of the release keeps.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && "/usr/bin/python${PYTHON_VERSION}" -c \
        "import sys; assert '%d.%d' % sys.version_info[:2] == '${PYTHON_VERSION}', sys.version" \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin gpuflow

# Bytecode of the envs is compiled when they are built; a job never writes .pyc files
# into an env that other runs share.
ENV GPUFLOW_PYTHON="/usr/bin/python${PYTHON_VERSION}" \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The flow image's user (uid 10001), so what a job writes into the run's workspace
# belongs to the flow's user; numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /home/gpuflow

# Declared here, after the packages: a build argument used before a RUN is part of its
# cache key, and the revision changes with every commit.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpuflow-job" \
      org.opencontainers.image.description="gpuflow's job image: the interpreter of the job environments on the NAS, for GPU job containers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.gpuflow.python="/usr/bin/python${PYTHON_VERSION}" \
      io.gpuflow.python-version="${PYTHON_VERSION}"

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/bin/sh", "-c", "exec \"$GPUFLOW_PYTHON\" --version"]
