"""The compute targets a stack can use. A new backend is a module and a line here."""

from __future__ import annotations

from gpuflow.compute.base import ComputeTarget
from gpuflow.compute.ecs.target import EcsTask
from gpuflow.compute.kubernetes.target import KubernetesPyTorchJob
from gpuflow.compute.local import LocalSubprocess

COMPUTE_BACKENDS: tuple[type[ComputeTarget], ...] = (LocalSubprocess, KubernetesPyTorchJob, EcsTask)
