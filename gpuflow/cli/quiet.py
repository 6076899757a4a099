"""Keep Prefect's client-side chatter out of a command's stderr: gpuflow's own lines only."""

from __future__ import annotations

import logging
import os


def quiet_prefect_client() -> None:
    """Call before Prefect is imported (its telemetry check runs at import)."""
    # Prefect's SDK prints a telemetry notice on a terminal's first import; gpuflow's servers
    # already run with analytics off, so its commands keep the client off too. A user who
    # sets DO_NOT_TRACK themselves keeps their value.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Loading a block emits a `*.loaded` event that is still queued when a short command
    # exits: the events worker delivers it while draining, and warns "Still processing
    # items" at WARNING on every such exit. Errors (an event it could not send) still show.
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)
