"""The environment catalog as a Prefect block, so the UI can create and edit one.

All the logic is ``gpuflow/envs/catalog.py``'s (which imports no Prefect); this face
adds only what Prefect needs to save and load it.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from gpuflow.envs.catalog import EnvCatalog

__all__ = ["EnvironmentFabric"]


class EnvironmentFabric(EnvCatalog, Block):
    """Prebuilt uv environments for jobs, shared by every run on one NAS."""

    _block_type_name = "gpuflow environment fabric"
    _block_type_slug = "gpuflow-environment-fabric"
    _description = "Content-addressed uv environments on shared storage (envs/<key>/.venv)."
