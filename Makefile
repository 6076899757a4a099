# The two commands of the README: `make demo` and `make test`.
# Needs only Python 3.11+ and pip: uv is installed into .tools/ when it is not on PATH.

PYTHON ?= python3
UV_TOOLS := $(CURDIR)/.tools/uv
UV ?= $(shell command -v uv 2>/dev/null || echo $(UV_TOOLS)/bin/uv)
RUN := $(UV) run --frozen

.PHONY: demo test lint typecheck unit sync server-stop clean

demo: sync
	$(RUN) gpuflow demo

test: sync lint typecheck
	$(RUN) pytest

lint: sync
	$(RUN) ruff format --check .
	$(RUN) ruff check .

typecheck: sync
	$(RUN) mypy .

sync: $(UV)
	$(UV) sync --frozen

$(UV_TOOLS)/bin/uv:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(UV_TOOLS) uv

server-stop:
	$(RUN) gpuflow server stop

clean:
	-$(RUN) gpuflow server stop
	rm -rf .gpuflow .venv .tools
