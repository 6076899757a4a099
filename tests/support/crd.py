"""Where the tests find the real PyTorchJob CRD: ``../shared/k8s-schemas/`` beside the project.

``GPUFLOW_K8S_SCHEMAS`` points at another copy of that folder. Without one, the tests
that need it skip and say why.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS_ENV = "GPUFLOW_K8S_SCHEMAS"
CRD_FILE = "kubeflow.org_pytorchjobs.yaml"


def schemas_dir() -> Path:
    configured = os.environ.get(SCHEMAS_ENV)
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "k8s-schemas"


def load_pytorchjob_crd() -> dict[str, Any]:
    """The PyTorchJob CRD document, or a skip naming where it was looked for."""
    path = schemas_dir() / CRD_FILE
    if not path.is_file():
        pytest.skip(
            f"PyTorchJob CRD not found at {path}: put the shared k8s-schemas folder beside the "
            f"project or set {SCHEMAS_ENV} to a folder holding {CRD_FILE}"
        )
    return _parse(path)


@functools.cache
def _parse(path: Path) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    return crd
