"""The job contract: the command line every job gets, and the files it writes.

A job is a uv project with one console script (``jobs/<name>/``); it is called with the
same arguments whatever it is (the reference stand-in, a diffusers model) and writes
``RAW_OUTPUT`` into the workspace's outputs, which postprocessing turns into
``OUTPUT_NAME``. The prompt reaches the job as a file (``--prompt-file``). Exit codes
and progress lines are ``gpuflow_progress``'s (``jobs/progress/README.md``).
"""

from __future__ import annotations

from pathlib import Path

from gpuflow.compute.base import JobSpec
from gpuflow.core.request import VideoRequest
from gpuflow.core.workspace import Workspace
from gpuflow.envs.catalog import ResolvedEnv, console_script
from gpuflow.storage.model_cache import CachedModel

RAW_OUTPUT = "raw.mp4"  # what the job writes
# The prompt, in the workspace's root (beside inputs/, so no staged input can be named so).
PROMPT_FILE = "prompt.txt"
OUTPUT_NAME = "video.mp4"  # what the run uploads under <outputs_uri>/<run-id>/


def job_spec(
    request: VideoRequest,
    job_dir: Path,
    env: ResolvedEnv,
    model: CachedModel,
    image: Path,
    workspace: Workspace,
    timeout_s: float,
    *,
    write_prompt: bool = True,
) -> JobSpec:
    """The job's command line for ``request``: each option and its value are one argv
    element, ``--name=value``, so no value can be read as an option by the job's argument
    parser. The prompt goes into ``<workspace>/prompt.txt`` (written here, UTF-8, verbatim)
    and the job gets its path: a prompt of any length and script reaches it whole on every
    backend, where argv has limits (ECS: 8,192 characters of overrides in all). A dry run
    passes ``write_prompt=False``: it shows the command and writes nothing."""
    prompt_file = workspace.root / PROMPT_FILE
    if write_prompt:
        prompt_file.write_bytes(request.prompt.encode("utf-8"))
    options = {
        "model-dir": str(model.path),
        "image": str(image),
        "prompt-file": str(prompt_file),
        "width": str(request.width),
        "height": str(request.height),
        "frames": str(request.num_frames),
        "fps": str(request.fps),
        "seed": str(request.seed),
        "output": str(workspace.output_path(RAW_OUTPUT)),
    }
    argv = [
        str(env.script(console_script(job_dir))),
        *(f"--{name}={value}" for name, value in options.items()),
    ]
    return JobSpec(
        name=f"{request.job}-{workspace.root.name}",
        argv=argv,
        workdir=workspace.root,
        gpus=request.gpus,
        gpu_type=request.gpu_type or None,  # the request's empty type is any
        timeout_s=timeout_s,
        torchrun=str(torchrun) if (torchrun := env.script("torchrun")).exists() else None,
        interpreter=env.interpreter(),
    )
