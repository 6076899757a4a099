"""The job's device and, under torchrun, its process group and context parallelism.

One process: CUDA when a GPU is visible, the CPU otherwise. Several (``WORLD_SIZE`` > 1,
set by torchrun or the training operator): every rank joins ``torch.distributed`` (NCCL
on CUDA, gloo on the CPU). On CUDA, diffusers' context parallelism splits the
transformer's token sequence across the ranks (Ulysses attention when the heads divide
among them, ring attention otherwise): every rank runs the whole pipeline on the same
seed, the text/image encoders and the VAE unsplit, and only rank 0 writes the video.
diffusers' context parallelism needs an accelerator (0.42 builds its device mesh from
the accelerator count), so on the CPU the other ranks load and check the model, then
wait for rank 0, which generates alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import WanImageToVideoPipeline


class EnvironmentProblem(Exception):
    """The job was given GPUs it cannot use (no driver, a CPU-only torch)."""


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def gpus_assigned() -> str | None:
    """The devices gpuflow gave this job (``CUDA_VISIBLE_DEVICES``), None when none: the
    local target sets it empty on a machine without GPUs, and the job runs on the CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return visible if visible and visible != "-1" else None


def choose_device() -> torch.device:
    import torch

    assigned = gpus_assigned()
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if assigned is not None:
        raise EnvironmentProblem(
            f"CUDA_VISIBLE_DEVICES={assigned} gives this job GPUs, but torch "
            f"{torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU build'}) sees "
            "no usable CUDA device: no NVIDIA driver in this container or host, or one "
            "older than the CUDA build"
        )
    return torch.device("cpu")


def start() -> Processes:
    """Pick the device and, under torchrun, join the process group."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = choose_device()
    if world_size > 1:
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
        # MASTER_ADDR/PORT, RANK and WORLD_SIZE come from torchrun's environment.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=device)


def share_transformer(pipeline: WanImageToVideoPipeline, processes: Processes) -> str | None:
    """Split the transformer's sequence across the ranks; returns how, for the log, or
    None on the CPU, where the ranks cannot share the work."""
    from diffusers import ContextParallelConfig

    if processes.device.type == "cpu":
        return None
    heads = int(pipeline.transformer.config.num_attention_heads)
    if heads % processes.world_size == 0:
        config = ContextParallelConfig(ulysses_degree=processes.world_size)
        how = f"Ulysses attention over {processes.world_size} ranks"
    else:
        config = ContextParallelConfig(ring_degree=processes.world_size)
        how = f"ring attention over {processes.world_size} ranks ({heads} heads)"
    pipeline.transformer.enable_parallelism(config=config)
    return how


def wait_for_all(processes: Processes) -> None:
    """Block until every rank got here (the CPU ranks that do not generate wait for 0)."""
    if processes.distributed:
        import torch.distributed as dist

        dist.barrier()


def stop(processes: Processes) -> None:
    if processes.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
