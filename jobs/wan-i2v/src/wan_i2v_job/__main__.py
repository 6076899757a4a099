"""Command line of the Wan I2V job: ``wan-i2v-job --model-dir ... --image ... --output ...``.

The arguments and exit codes are the reference job's (``jobs/i2v``): a bad argument or
model directory is a config error (1), an unreadable image an input error (2), running
out of memory (CUDA or host) a resource error (4), GPUs given to the job that CUDA
cannot use an environment error (5), anything unexpected a logic error (3).

Under torchrun every rank loads the model and runs the denoising loop with the
transformer's sequence split across the ranks; rank 0 alone reports progress and
writes the video (``wan_i2v_job.processes``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflow_progress import (
    ExitCode,
    report_metric,
    report_output,
    report_progress,
    writes_outputs,
)
from gpuflow_progress.arguments import job_parser, parse_job_arguments

from wan_i2v_job import processes
from wan_i2v_job.model import ModelError, check_architecture, load_pipeline, read_sampling

if TYPE_CHECKING:
    from PIL.Image import Image

# Wan's VAE compresses 4 frames into one latent frame after the first, and 8x8 pixels
# into one latent pixel that the transformer patches 2x2: sizes the pipeline would
# otherwise round silently, giving a video of another size than the request asked.
_FRAME_STRIDE = 4
_PIXEL_MULTIPLE = 16


def build_parser() -> argparse.ArgumentParser:
    return job_parser("wan-i2v-job", __doc__.splitlines()[0])


def _fail(code: ExitCode, message: str) -> int:
    print(f"wan-i2v-job: {code.name.lower().replace('_', ' ')}: {message}", file=sys.stderr)
    return int(code)


def _size_problem(args: argparse.Namespace) -> str | None:
    for name in ("width", "height"):
        value = getattr(args, name)
        if value % _PIXEL_MULTIPLE:
            return (
                f"--{name} {value} is not a multiple of {_PIXEL_MULTIPLE} (Wan's VAE and patches)"
            )
    if args.frames % _FRAME_STRIDE != 1:
        return (
            f"--frames {args.frames} is not {_FRAME_STRIDE}k+1 (Wan's VAE encodes the first "
            f"frame, then {_FRAME_STRIDE} frames per latent frame): try "
            f"{args.frames // _FRAME_STRIDE * _FRAME_STRIDE + 1}"
        )
    return None


def _read_image(path: Path) -> Image:
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()
        return opened.convert("RGB")


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    # The CPU allocator raises a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _write_video(frames: Any, output: Path, fps: int) -> None:
    """Frames (float, 0..1, frames x height x width x 3) as an H.264 MP4, published by a
    rename so a killed job never leaves a short video under the output's name."""
    import imageio_ffmpeg
    import numpy as np

    pixels = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    height, width = pixels.shape[1:3]
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial.mp4")
    writer = imageio_ffmpeg.write_frames(
        str(partial),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=None,
        output_params=["-crf", "18", "-preset", "veryfast"],
        ffmpeg_log_level="error",
    )
    try:
        writer.send(None)
        for frame in pixels:
            writer.send(np.ascontiguousarray(frame).tobytes())
        writer.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)


def run(args: argparse.Namespace) -> int:
    problem = _size_problem(args)
    if problem:
        return _fail(ExitCode.CONFIG_ERROR, problem)
    try:
        check_architecture(args.model_dir)
        sampling = read_sampling(args.model_dir)
    except ModelError as exc:
        return _fail(ExitCode.CONFIG_ERROR, str(exc))
    try:
        image = _read_image(args.image)
    except FileNotFoundError:
        return _fail(ExitCode.INPUT_ERROR, f"input image {args.image} does not exist")
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        return _fail(
            ExitCode.INPUT_ERROR, f"input image {args.image} is not a readable image: {exc}"
        )

    import torch

    try:
        ranks = processes.start()
    except processes.EnvironmentProblem as exc:
        return _fail(ExitCode.ENVIRONMENT_ERROR, str(exc))
    try:
        return _generate(args, image, sampling.num_inference_steps, sampling.guidance_scale, ranks)
    except ModelError as exc:
        return _fail(ExitCode.CONFIG_ERROR, str(exc))
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        device = ranks.device
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            where = f"on {device} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
        else:
            where = "in host memory"
        return _fail(
            ExitCode.RESOURCE_ERROR,
            f"out of memory {where} at {args.width}x{args.height}, {args.frames} frames: {exc}",
        )
    finally:
        processes.stop(ranks)


def _generate(
    args: argparse.Namespace,
    image: Image,
    steps: int,
    guidance: float,
    ranks: processes.Processes,
) -> int:
    import torch

    dtype = torch.bfloat16 if ranks.device.type == "cuda" else torch.float32
    started = time.monotonic()
    pipeline = load_pipeline(args.model_dir, ranks.device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    print(
        f"rank {ranks.rank}: loaded {args.model_dir} on {ranks.device} ({dtype}) in "
        f"{time.monotonic() - started:.1f}s; {steps} steps, guidance {guidance}",
        flush=True,
    )
    generates = True
    if ranks.distributed:
        shared = processes.share_transformer(pipeline, ranks)
        generates = shared is not None or writes_outputs()
        how = shared or "on the CPU the ranks cannot share the denoising: rank 0 generates alone"
        print(f"rank {ranks.rank}: {how}", flush=True)
    if not generates:
        processes.wait_for_all(ranks)
        print(f"rank {ranks.rank}: model checked; rank 0 writes {args.output}", flush=True)
        return int(ExitCode.SUCCESS)

    def on_step_end(
        _pipeline: object, step: int, _timestep: object, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        report_progress(step + 1, steps, f"denoising step {step + 1}/{steps}")
        return tensors

    started = time.monotonic()
    # The same seed on every rank: context parallelism needs the same latents everywhere.
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    result = pipeline(
        image=image,
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="np",
        callback_on_step_end=on_step_end,
    )
    elapsed = time.monotonic() - started
    if not writes_outputs():
        processes.wait_for_all(ranks)
        print(f"rank {ranks.rank}: done; rank 0 writes {args.output}", flush=True)
        return int(ExitCode.SUCCESS)
    try:
        _write_video(result.frames[0], args.output, args.fps)
    except OSError as exc:
        code = ExitCode.RESOURCE_ERROR if exc.errno in (28, 122) else ExitCode.ENVIRONMENT_ERROR
        return _fail(code, f"writing {args.output} failed: {exc}")
    processes.wait_for_all(ranks)
    report_metric("seconds_per_step", elapsed / steps, "s")
    report_output("video", str(args.output))
    print(
        f"wrote {args.frames} frames at {args.width}x{args.height}, {args.fps} fps to "
        f"{args.output} ({elapsed:.1f}s for {steps} steps)",
        flush=True,
    )
    return int(ExitCode.SUCCESS)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's arguments (the contract's: ``gpuflow_progress.arguments``)."""
    return parse_job_arguments(build_parser(), argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    # Models come from the NAS model cache only: a missing file must fail, not download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return run(args)
    except MemoryError:
        return _fail(ExitCode.RESOURCE_ERROR, "out of memory")
    except Exception as exc:  # a bug in the job: report it as a logic error, not a crash code
        import traceback

        traceback.print_exc()
        return _fail(ExitCode.LOGIC_ERROR, f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
