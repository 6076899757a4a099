"""Before a job starts: does the machine have the interpreter its env was built on?

A job's argv starts a console script of a venv on the NAS, and the venv's ``bin/python``
links to the base interpreter it was built on (``/usr/bin/python3.11`` on the job image).
On an image without that interpreter the kernel's exec fails with "no such file or
directory", which the container runtimes report as a start failure and the targets would
retry. So every backend starts the job through ``checked_command``: a fixed POSIX ``sh``
script that checks the interpreter exists, is executable and is the env's minor version,
then ``exec``\\s the job's argv unchanged; otherwise it prints one line naming where it ran
(the image), the interpreter wanted and what it found, and exits with the config-error
code, which is not retried.

The script is a constant; every value (the image's name, the paths, the versions, the
job's argv) reaches it as a positional parameter, so none is ever parsed by the shell.
"""

from __future__ import annotations

from gpuflow_progress import ExitCode

from gpuflow.envs.records import BaseInterpreter

SHELL = "/bin/sh"
# $0 is a label in sh's own messages; it names what is speaking.
SCRIPT_NAME = "gpuflow-interpreter-check"
# dash, bash and busybox sh alike: POSIX only. `-E -S` keep the probe away from the
# image's PYTHON* variables and site-packages; Python 2 understands them too.
SCRIPT = f"""where=$1 python=$2 minor=$3 built=$4
shift 4
nl='
'
if [ ! -e "$python" ]; then
  found="$python does not exist"
elif [ -d "$python" ] || [ ! -x "$python" ]; then
  found="$python is not an executable file"
elif ! version=$("$python" -E -S -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' \
2>&1); then
  found="$python does not start: ${{version%%"$nl"*}}"
elif [ "${{version%.*}}" != "$minor" ]; then
  found="$python is Python $version"
else
  exec "$@"
fi
printf 'gpuflow: %s cannot run this job: its environment was built on Python %s at %s, \
but %s. Run the job on an image with that interpreter (the job image, \
docker/job.Dockerfile) or build its environment on this one.\\n' \
"$where" "$built" "$python" "$found" >&2
exit {int(ExitCode.CONFIG_ERROR)}
"""


def checked_command(
    command: list[str], interpreter: BaseInterpreter | None, where: str
) -> list[str]:
    """``command`` behind the interpreter check; unchanged when the job names no
    interpreter (a command that is not an env's, such as the image's own python).
    ``where`` names the machine in the message: ``image <name>``, ``host <name>``."""
    if interpreter is None:
        return list(command)
    return [
        SHELL,
        "-c",
        SCRIPT,
        SCRIPT_NAME,
        where,
        interpreter.path,
        interpreter.minor,
        interpreter.version,
        *command,
    ]
