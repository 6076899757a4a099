"""How long one container start takes on each storage driver of the test engine.

    uv run python benchmarks/container_start.py \\
        --engine overlay2=unix:///var/run/docker.sock=gpuflow:0.1.0 \\
        --engine vfs=unix:///var/tmp/gpuflow-docker-vfs/docker.sock=gpuflow:0.1.0 [--rounds 3]

Each ``--engine`` is LABEL=DOCKER_HOST=IMAGE: a running engine (docker/engine.sh starts
one per driver with GPUFLOW_DOCKER_STORAGE_DRIVERS, DOCKER_HOST, GPUFLOW_DOCKER_STATE and
GPUFLOW_DOCKER_DATA_ROOT) and an image it holds, the flow image for the container tests'
case. Runs ``docker run --rm --network host --entrypoint /bin/true IMAGE`` on each engine
in turn, ``--rounds`` times (A, B, A, B, ...), so both see the same load, and prints each
start's wall time, the median per engine and each median's ratio to the first engine's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from dataclasses import dataclass

DOCKER = "/usr/bin/docker"


@dataclass(frozen=True)
class Engine:
    label: str
    host: str
    image: str


def engine(spec: str) -> Engine:
    parts = spec.split("=", 2)
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"--engine {spec!r} is not LABEL=DOCKER_HOST=IMAGE")
    return Engine(*parts)


def start_once(target: Engine) -> float:
    argv = [DOCKER, "run", "--rm", "--network", "host", "--entrypoint", "/bin/true"]
    started = time.perf_counter()
    completed = subprocess.run(
        [*argv, target.image],
        env={**os.environ, "DOCKER_HOST": target.host},
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{target.label}: docker run failed: {completed.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", type=engine, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds} must be at least 1")
    seconds: dict[str, list[float]] = {target.label: [] for target in args.engine}
    for round_number in range(1, args.rounds + 1):
        for target in args.engine:
            elapsed = start_once(target)
            seconds[target.label].append(elapsed)
            load = os.getloadavg()[0]
            print(f"round {round_number} {target.label}: {elapsed:.2f} s (load {load:.1f})")
    baseline = statistics.median(seconds[args.engine[0].label])
    for label, values in seconds.items():
        median = statistics.median(values)
        print(f"{label}: median {median:.2f} s, {median / baseline:.3f}x {args.engine[0].label}")


if __name__ == "__main__":
    main()
