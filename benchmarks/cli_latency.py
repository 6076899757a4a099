"""How long `gpuflow` commands take beside the `prefect` commands a user would run instead.

    uv run python benchmarks/cli_latency.py [--rounds 5]

Starts a local Prefect server in a temporary state directory, bootstraps gpuflow there,
creates a deployment of the generate-video flow (no work pool: nothing runs) and builds the
reference job's environment, then runs each pair of commands alternately, ``--rounds``
times (A, B, A, B, ...), so both see the same load, and prints the median wall time of each
and their ratio:

* `gpuflow --help` and `gpuflow submit --help` beside `prefect --help` (goal: ≤ 0.25 times);
* `gpuflow env build` of an environment that is ready (goal: ≤ 1.5 s) and `gpuflow env list`,
  beside importing the environment fabric's Prefect block alone (what they cost before the
  env commands used the plain catalog);
* `gpuflow status RUN` beside `prefect flow-run ls` (goal: ≤ 1 times);
* `gpuflow submit` until the run exists beside `prefect deployment run` (goal: ≤ 1 times).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parents[1]


def _run(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {completed.returncode}: {completed.stderr}")
    return elapsed


def _pair(
    name: str,
    a: list[str],
    b: list[str],
    env: dict[str, str],
    rounds: int,
    baseline: str = "",
) -> None:
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(rounds):
        times_a.append(_run(a, env))
        times_b.append(_run(b, env))
    median_a, median_b = statistics.median(times_a), statistics.median(times_b)
    baseline = baseline or " ".join([Path(b[0]).name, *b[1:3]])
    print(
        f"{name:<34} {median_a:7.2f} s   {baseline:<30.30} {median_b:7.2f} s"
        f"   ratio {median_a / median_b:5.2f}",
        flush=True,
    )


async def _deployment(api_url: str) -> tuple[str, str]:
    """A deployment of the real flow with its parameter schema, and one run of it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.callables import parameter_schema

    from gpuflow.pipeline.generate_video import generate_video

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(generate_video.name)
            name = f"bench-{uuid.uuid4().hex[:6]}"
            deployment_id = await client.create_deployment(
                flow_id,
                name=name,
                parameter_openapi_schema=parameter_schema(generate_video).model_dump(
                    exclude_unset=True
                ),
                enforce_parameter_schema=True,
            )
            run = await client.create_flow_run_from_deployment(
                deployment_id,
                parameters={"request": {"prompt": "x", "image_uri": "s3://b/cat.png"}},
            )
    return f"{generate_video.name}/{name}", str(run.id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from gpuflow.ops.local_server import ensure_server, stop_server

    with tempfile.TemporaryDirectory(prefix="gpuflow-cli-bench-") as tmp:
        state_dir = Path(tmp)
        server, _ = ensure_server(state_dir)
        env = {
            **os.environ,
            "PREFECT_API_URL": server.api_url,
            "GPUFLOW_STATE_DIR": str(state_dir),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        try:
            gpuflow, prefect = str(BIN / "gpuflow"), str(BIN / "prefect")
            _run([gpuflow, "bootstrap", "--pool-type", "process"], env)
            deployment, run_id = asyncio.run(_deployment(server.api_url))
            job_dir = str(REPOSITORY / "jobs" / "i2v")
            _run([gpuflow, "env", "build", job_dir], env)  # the measured builds find it ready
            print(f"{'gpuflow command':<34} {'median':>9}   {'baseline':<30} {'median':>9}")
            _pair("gpuflow --help", [gpuflow, "--help"], [prefect, "--help"], env, args.rounds)
            _pair(
                "gpuflow submit --help",
                [gpuflow, "submit", "--help"],
                [prefect, "--help"],
                env,
                args.rounds,
            )
            import_block = [sys.executable, "-c", "import gpuflow.envs.fabric"]
            for name, command in (
                ("gpuflow env build (ready)", [gpuflow, "env", "build", job_dir]),
                ("gpuflow env list", [gpuflow, "env", "list"]),
            ):
                _pair(name, command, import_block, env, args.rounds, "import the fabric block")
            # `status` of a run that is not finished exits 6 by design: time it through sh.
            _pair(
                "gpuflow status RUN",
                ["sh", "-c", f'"{gpuflow}" status {run_id} >/dev/null; [ $? -eq 6 ]'],
                [prefect, "flow-run", "ls"],
                env,
                args.rounds,
            )
            submit = [gpuflow, "submit", "--deployment", deployment, "--prompt", "x",
                      "--image-uri", "s3://b/cat.png"]  # fmt: skip
            _pair(
                "gpuflow submit",
                submit,
                [prefect, "deployment", "run", deployment, "--param", "stack=default",
                 "--param", 'request={"prompt": "x", "image_uri": "s3://b/cat.png"}'],
                env,
                args.rounds,
            )  # fmt: skip
        finally:
            stop_server(state_dir)


if __name__ == "__main__":
    main()
