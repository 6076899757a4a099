"""The job contract's command line, shared by every job: gpuflow passes each option as
``--name=value`` (so no value can be read as an option) and the prompt as a UTF-8 file in
the run's workspace (any length, verbatim: ECS caps a task's command at 8,192 characters).
A bad argument exits with ``ExitCode.CONFIG_ERROR``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from gpuflow_progress import ExitCode


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(ExitCode.CONFIG_ERROR)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The contract's options; ``--prompt TEXT`` replaces ``--prompt-file`` for a person at
    a shell."""
    parser = _ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt")
    prompt.add_argument("--prompt-file", type=Path, help="UTF-8 file holding the prompt.")
    parser.add_argument("--width", type=_positive, required=True)
    parser.add_argument("--height", type=_positive, required=True)
    parser.add_argument("--frames", type=_positive, required=True)
    parser.add_argument("--fps", type=_positive, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output", type=Path, required=True)
    return parser


def parse_job_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser``'s arguments, with a ``--prompt-file`` read into ``prompt`` byte for byte
    (no newline translation)."""
    args = parser.parse_args(argv)
    if args.prompt == []:
        # argparse drops a value of exactly "--" (--prompt=--), leaving an empty list.
        args.prompt = "--"
    if args.prompt_file is not None:
        try:
            args.prompt = args.prompt_file.read_bytes().decode("utf-8")
        except OSError as exc:
            parser.error(f"--prompt-file {args.prompt_file}: {exc.strerror}")
        except UnicodeDecodeError:
            parser.error(f"--prompt-file {args.prompt_file} is not UTF-8 text")
    return args
