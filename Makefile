# The two commands of the README: `make demo` and `make test`.
# Needs only Python 3.11+ and pip: uv is installed into .tools/ when it is not on PATH.

PYTHON ?= python3
UV_TOOLS := $(CURDIR)/.tools/uv
UV ?= $(shell command -v uv 2>/dev/null || echo $(UV_TOOLS)/bin/uv)
RUN := $(UV) run --frozen
# Test processes: most integration tests wait on servers and subprocesses, so three
# workers keep two cores busy. A file's tests stay on one worker (they share fixtures),
# and the files go out in the order tests/conftest.py gives them, the longest first
# (xdist's own order is by number of tests, which sent the single-test files of minutes
# last).
TEST_WORKERS ?= 3

.PHONY: demo test lint typecheck unit templates sync server-stop clean docker-engine flow-image

demo: sync
	$(RUN) gpuflow demo

test: sync lint typecheck
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# The tests that need no service (no Prefect server, database, emulator or uv build), in
# two processes: most of their time is subprocesses starting and fake servers answering.
unit: sync
	$(RUN) pytest -m "not integration" -n 2

lint: sync
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) hadolint docker/*.Dockerfile

typecheck: sync
	$(RUN) mypy .

sync: $(UV)
	$(UV) sync --frozen

$(UV_TOOLS)/bin/uv:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(UV_TOOLS) uv

# Render the work-pool templates and RBAC in deployments/ from the code.
templates: sync
	$(RUN) python -m gpuflow.ops.pool_templates deployments

# A Docker engine that answers and the base image (docker/engine.sh; the container tests
# run it themselves too).
docker-engine:
	bash docker/engine.sh

# The flow image as `prefect deploy` builds it (GPUFLOW_IMAGE_REGISTRY, GPUFLOW_IMAGE_TAG,
# GPUFLOW_BUILD_CA_BUNDLE as docs/containers.md says).
flow-image: sync docker-engine
	$(RUN) python -m gpuflow.ops.deploy_steps

server-stop:
	$(RUN) gpuflow server stop

clean:
	-$(RUN) gpuflow server stop
	rm -rf .gpuflow .venv .tools
