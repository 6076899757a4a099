"""The real PyTorchJob CRD (``tests/support/schemas/``, see its README for its source and
version), or the copy in the folder ``GPUFLOW_K8S_SCHEMAS`` names."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml

SCHEMAS_ENV = "GPUFLOW_K8S_SCHEMAS"
CRD_FILE = "kubeflow.org_pytorchjobs.yaml"
BUNDLED = Path(__file__).resolve().parent / "schemas"


def schemas_dir() -> Path:
    configured = os.environ.get(SCHEMAS_ENV)
    return Path(configured) if configured else BUNDLED


def load_pytorchjob_crd() -> dict[str, Any]:
    """The PyTorchJob CRD document; a missing copy is an error, never a skip."""
    path = schemas_dir() / CRD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"PyTorchJob CRD not found at {path}: unset {SCHEMAS_ENV} to use the bundled copy "
            f"in {BUNDLED}, or point it at a folder holding {CRD_FILE}"
        )
    return _parse(path)


@functools.cache
def _parse(path: Path) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    return crd
