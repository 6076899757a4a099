"""The job guard: a local GPU job dies with the flow process that started it.

The flow starts ``python -m gpuflow.compute.job_guard <lifeline-fd> -- <argv...>`` as the
leader of a new session; the guard starts the job in that session's process group
and reads the lifeline, a pipe whose only writer is the flow process. When the flow
process exits for any reason (``kill -9`` included) the kernel closes the pipe, the
guard reads end-of-file and kills the whole process group: no job runs unaccounted.

Why not ``PR_SET_PDEATHSIG``: it fires when the *thread* that forked the child
exits (Prefect may start jobs from worker threads) and reaches only the direct
child, not the job's own children.

The guard passes its exit status through unchanged: the job's exit code, or the
job's death by a signal re-raised on the guard itself. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from types import FrameType


def _kill_group_when_lifeline_closes(lifeline_fd: int) -> None:
    while True:
        try:
            chunk = os.read(lifeline_fd, 4096)
        except InterruptedError:
            continue
        if not chunk:  # the flow process is gone: nobody accounts for this job any more
            os.killpg(os.getpgid(0), signal.SIGKILL)
            return


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGTERM to the group reaches the job directly; the guard waits for its exit."""


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: python -m gpuflow.compute.job_guard LIFELINE_FD -- ARGV...\n")
        return 3
    lifeline_fd = int(args[0])
    # A Python handler (not SIG_IGN) so that the job, after exec, gets the default.
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    try:
        job = subprocess.Popen(args[2:])  # same process group as the guard
    except OSError as exc:
        sys.stderr.write(f"gpuflow: cannot start the job {args[2]!r}: {exc}\n")
        return 5  # environment error: the job's program is missing or not executable
    watcher = threading.Thread(
        target=_kill_group_when_lifeline_closes, args=(lifeline_fd,), daemon=True
    )
    watcher.start()
    code = job.wait()
    if code < 0:
        # Die the way the job died, so the flow sees the same signal.
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP have no handler
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
