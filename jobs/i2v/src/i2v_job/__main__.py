"""Command line of the reference job: ``i2v-job --model-dir ... --image ... --output ...``.

Run as several processes (under torchrun), rank 0 alone renders and writes the video;
the other ranks check the same inputs and end (``jobs/progress/README.md``).

Exit codes follow gpuflow's classes (``gpuflow_progress.ExitCode``): a bad argument
or model is a config error (1), an unreadable image an input error (2), running out
of memory or disk a resource error (4), a missing encoder an environment error (5),
anything unexpected a logic error (3).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

from gpuflow_progress import (
    ExitCode,
    process_rank,
    report_metric,
    report_output,
    report_progress,
    writes_outputs,
)
from gpuflow_progress.arguments import job_parser, parse_job_arguments
from PIL import Image, UnidentifiedImageError

from i2v_job.animate import camera_path, render_frames
from i2v_job.model import ModelError, load_model


def build_parser() -> argparse.ArgumentParser:
    return job_parser("i2v-job", __doc__.splitlines()[0])


def _fail(code: ExitCode, message: str) -> int:
    print(f"i2v-job: {code.name.lower().replace('_', ' ')}: {message}", file=sys.stderr)
    return int(code)


def run(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.model_dir)
    except ModelError as exc:
        return _fail(ExitCode.CONFIG_ERROR, str(exc))
    print(f"loaded model {model.name}@{model.revision} from {args.model_dir}", flush=True)
    try:
        with Image.open(args.image) as opened:
            opened.load()
            image = opened.convert("RGB")
    except FileNotFoundError:
        return _fail(ExitCode.INPUT_ERROR, f"input image {args.image} does not exist")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return _fail(
            ExitCode.INPUT_ERROR, f"input image {args.image} is not a readable image: {exc}"
        )

    try:
        import imageio_ffmpeg
    except ImportError as exc:
        return _fail(ExitCode.ENVIRONMENT_ERROR, f"imageio-ffmpeg is not installed: {exc}")
    if not writes_outputs():
        # The stand-in has no work to share: past the checks, rank 0 renders alone.
        print(f"rank {process_rank()}: inputs checked; rank 0 writes {args.output}", flush=True)
        return int(ExitCode.SUCCESS)

    # Length and digest, not the text: enough to see that the prompt arrived whole.
    digest = hashlib.sha256(args.prompt.encode("utf-8")).hexdigest()
    print(f"prompt: {len(args.prompt)} characters, sha256 {digest}", flush=True)
    path = camera_path(args.prompt, args.seed)
    print(
        f"camera: zoom {path.zoom_start:.2f}->{path.zoom_end:.2f}, "
        f"pan ({path.pan_x:+.2f}, {path.pan_y:+.2f})",
        flush=True,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(f".{args.output.name}.partial.mp4")
    started = time.monotonic()
    writer = imageio_ffmpeg.write_frames(
        str(partial),
        (args.width, args.height),
        fps=args.fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=None,
        output_params=["-crf", "18", "-preset", "veryfast"],
        ffmpeg_log_level="error",
    )
    try:
        writer.send(None)
        frames = render_frames(image, model, path, args.width, args.height, args.frames, args.seed)
        for index, frame in enumerate(frames, start=1):
            writer.send(frame.tobytes())
            report_progress(index, args.frames, f"frame {index}/{args.frames}")
        writer.close()
    except MemoryError:
        partial.unlink(missing_ok=True)
        return _fail(ExitCode.RESOURCE_ERROR, "out of memory while rendering")
    except OSError as exc:
        partial.unlink(missing_ok=True)
        code = ExitCode.RESOURCE_ERROR if exc.errno in (28, 122) else ExitCode.ENVIRONMENT_ERROR
        return _fail(code, f"writing {args.output} failed: {exc}")
    # Publish only a complete video: a killed job leaves a partial file, never a short MP4.
    partial.replace(args.output)
    elapsed = time.monotonic() - started
    report_metric("frames_per_s", args.frames / elapsed if elapsed > 0 else 0.0, "frames/s")
    report_output("video", str(args.output))
    print(
        f"wrote {args.frames} frames at {args.width}x{args.height}, "
        f"{args.fps} fps to {args.output}",
        flush=True,
    )
    return int(ExitCode.SUCCESS)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The job's arguments (the contract's: ``gpuflow_progress.arguments``)."""
    return parse_job_arguments(build_parser(), argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
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
