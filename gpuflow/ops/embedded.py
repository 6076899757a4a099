"""The embedded default: gpuflow on one machine, no cloud.

Everything lives under one state directory (the nearest ``.gpuflow/`` in the working
directory or above it, unless ``GPUFLOW_STATE_DIR`` says otherwise):

    .gpuflow/prefect/   the local Prefect server's home (SQLite database)
    .gpuflow/nas/       the "NAS": models/, envs/, uv-cache/, workspaces/
    .gpuflow/store/     the file:// object store: inputs, model sources, outputs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpuflow.core.request import ModelRef

if TYPE_CHECKING:
    from gpuflow.envs.catalog import ResolvedEnv
    from gpuflow.pipeline.stack import GpuflowStack

DEFAULT_MODEL = ModelRef(name="wan2.2-i2v-standin", revision="v1")
# The model of the wan-i2v job's tests and demo: random weights, real diffusers layout.
WAN_TINY_MODEL = ModelRef(name="wan2.1-i2v-tiny-random", revision="v1")
SAMPLE_IMAGE_KEY = "samples/landscape.png"
STATE_DIR_NAME = ".gpuflow"


def default_state_dir() -> Path:
    """``GPUFLOW_STATE_DIR``, else the nearest ``.gpuflow/`` in the working directory or one
    above it (as git finds ``.git/``), so commands find the local server from anywhere in a
    project; else ``.gpuflow/`` in the working directory."""
    configured = os.environ.get("GPUFLOW_STATE_DIR")
    if configured:
        return Path(configured).resolve()
    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        if (directory / STATE_DIR_NAME).is_dir():
            return directory / STATE_DIR_NAME
    return here / STATE_DIR_NAME


def repository_jobs_root() -> Path:
    """``jobs/`` of this checkout (gpuflow runs from its repository, as prefect deploy does)."""
    return Path(os.environ.get("GPUFLOW_JOBS_ROOT", Path(__file__).resolve().parents[2] / "jobs"))


@dataclass(frozen=True)
class EmbeddedLayout:
    state_dir: Path

    @property
    def nas_root(self) -> Path:
        return self.state_dir / "nas"

    @property
    def store_root(self) -> Path:
        return self.state_dir / "store"

    def stack(self, gpu_devices: list[int] | None = None) -> GpuflowStack:
        # Imported here: the stack imports every backend, and the command line reads the
        # layout's paths in commands that must answer at once.
        from gpuflow.compute.local import LocalSubprocess
        from gpuflow.pipeline.stack import GpuflowStack
        from gpuflow.storage.local import LocalObjectStore

        store = LocalObjectStore(root=self.store_root)
        return GpuflowStack(
            nas_root=self.nas_root,
            jobs_root=repository_jobs_root(),
            object_store=store,
            models_uri=store.uri_for("models"),
            outputs_uri=store.uri_for("outputs"),
            # No devices given: NVML finds them (none without a driver: jobs use the CPU).
            compute=LocalSubprocess(devices=gpu_devices, lock_dir=self.nas_root / "locks"),
        )

    def seed_samples(self, model: ModelRef = DEFAULT_MODEL) -> str:
        """Put the sample image and model artifact into the store; returns the image URI."""
        from gpuflow.ops import samples
        from gpuflow.storage.local import LocalObjectStore

        store = LocalObjectStore(root=self.store_root)
        model_dir = self.store_root / "models" / model.name / model.revision
        if not (model_dir / "weights.npz").is_file():
            samples.write_model(model_dir, model.name, model.revision)
        image = self.store_root / SAMPLE_IMAGE_KEY
        if not image.is_file():
            samples.write_image(image)
        return store.uri_for(SAMPLE_IMAGE_KEY)

    def seed_wan_tiny_model(self, wan_env: ResolvedEnv, model: ModelRef = WAN_TINY_MODEL) -> None:
        """Put the tiny Wan I2V pipeline into the store as a model artifact, built by the
        wan-i2v job's environment ``wan_env``."""
        from gpuflow.ops import samples

        model_dir = self.store_root / "models" / model.name / model.revision
        if not (model_dir / "model_index.json").is_file():
            samples.write_wan_tiny_model(wan_env.python, model_dir)
