"""A real PgBouncer (the Debian package, 1.18 here) started by the test in front of the
local PostgreSQL: one database alias in transaction mode for the admission queue's pool,
one in session mode for its ``LISTEN`` connections, each with a fixed pool size."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.debian import debian_binary
from tests.support.services import service_missing

_BINARIES = ("pgbouncer", "/usr/sbin/pgbouncer")


@dataclass(frozen=True)
class PgBouncer:
    port: int
    pooled_database: str
    listen_database: str

    def admission_url(self, user: str = "postgres") -> str:
        return (
            f"postgresql://{user}@127.0.0.1:{self.port}/{self.pooled_database}"
            f"?pgbouncer_listen_database={self.listen_database}"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def pgbouncer(
    postgres_url: str, directory: Path, pool_size: int, listen_pool_size: int
) -> Iterator[PgBouncer]:
    """PgBouncer for the database of ``postgres_url`` (a trust-auth local server)."""
    binary = debian_binary("pgbouncer", *_BINARIES)
    if binary is None:
        service_missing("no pgbouncer binary (apt-get install pgbouncer)")
    server = postgres_url.removeprefix("postgresql://")
    user, _, rest = server.partition("@")
    hostport, _, database = rest.partition("/")
    host, _, port = hostport.partition(":")
    directory.mkdir(parents=True, exist_ok=True)
    listen_port = _free_port()
    target = f"host={host} port={port or 5432} dbname={database} user={user}"
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"queue = {target} pool_mode=transaction pool_size={pool_size}\n"
        f"queue_listen = {target} pool_mode=session pool_size={listen_pool_size}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen_port}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        "max_client_conn = 2000\ndefault_pool_size = 1\nmin_pool_size = 0\n"
        "reserve_pool_size = 0\nserver_reset_query = DISCARD ALL\n"
    )
    argv = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "nobody"]  # PgBouncer refuses to run as root
    log = directory / "pgbouncer.log"
    # Its log on stderr, into a file opened here: as nobody it could not open one itself.
    with log.open("wb") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", listen_port), timeout=1),
            ):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not start (exit {process.poll()}): {log.read_text()}"
                )
            time.sleep(0.1)
        yield PgBouncer(listen_port, "queue", "queue_listen")
    finally:
        process.terminate()
        process.wait(10)
