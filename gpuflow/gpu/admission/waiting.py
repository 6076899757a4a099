"""Waiting for admission: join the queue, wait to be admitted, hold it for the GPU job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from gpuflow.gpu.admission.base import AdmissionError, AdmissionQueue
from gpuflow.gpu.admission.policy import Ticket

logger = logging.getLogger(__name__)

_LEAVE_RETRY_S = 0.5


@contextlib.asynccontextmanager
async def admitted(
    queue: AdmissionQueue,
    ticket: Ticket,
    capacity: dict[str, int],
    ttl_s: float = 30.0,
    poll_s: float = 0.5,
) -> AsyncIterator[float]:
    """Wait in ``queue`` until ``ticket`` is admissible; hold the admission for the body.

    Yields the seconds spent waiting. The ticket leaves the queue on any exit. Between
    checks the waiter sleeps until the queue wakes it (slots may have come free), or
    ``poll_s`` at most: the fallback for a lost wake-up, and what notices an expiry (none
    while the queue's wake-ups are known to arrive: ``AdmissionQueue.fallback_poll_s``)."""
    started = time.monotonic()
    try:
        # Inside the try: a cancellation that lands after the enqueue committed (while its
        # connection goes back to the pool) must still take the entry out again.
        await queue.enqueue(ticket, capacity, ttl_s)
        async with queue.wakeup(ticket.ticket_id) as wakeup:
            failed_checks = 0
            while True:
                wakeup.clear()
                try:
                    verdict = await queue.try_admit(ticket.ticket_id, ttl_s)
                except AdmissionError as exc:
                    # An outage, or a statement the database ended (a deadlock victim): the
                    # entry keeps its place until its deadline, so wait and check again.
                    failed_checks += 1
                    if failed_checks == 1:
                        logger.warning(
                            "Admission check of %s failed (%s); retrying", ticket.ticket_id, exc
                        )
                    await asyncio.sleep(min(poll_s * 2 ** min(failed_checks - 1, 6), ttl_s / 3))
                    continue
                if failed_checks:
                    logger.info(
                        "Admission check of %s works again after %d failures",
                        ticket.ticket_id,
                        failed_checks,
                    )
                    failed_checks = 0
                if verdict:
                    break
                if verdict is None:
                    # Our deadline passed (this process stalled): queue again at the back.
                    logger.warning("Admission ticket %s expired; queueing again", ticket.ticket_id)
                    await queue.enqueue(ticket, capacity, ttl_s)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), queue.fallback_poll_s(poll_s))
        waited = time.monotonic() - started
        heartbeat = asyncio.create_task(_beat(queue, ticket.ticket_id, ttl_s))
        try:
            yield waited
        finally:
            heartbeat.cancel()
            # Queue bookkeeping never fails the job it admitted: whatever ended the
            # heartbeat is logged, not raised.
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await heartbeat
                except Exception as exc:
                    logger.warning("Admission heartbeat of %s ended: %s", ticket.ticket_id, exc)
    finally:
        # Shielded: a cancelled request must still leave the queue, or it blocks it until
        # its deadline passes.
        await asyncio.shield(_leave(queue, ticket.ticket_id, ttl_s))


async def _leave(queue: AdmissionQueue, ticket_id: str, ttl_s: float) -> None:
    """Leave the queue, retrying through an outage until the entry would have expired
    anyway (then it no longer blocks anyone)."""
    give_up_at = time.monotonic() + ttl_s
    while True:
        try:
            await queue.leave(ticket_id)
            return
        except AdmissionError as exc:
            if time.monotonic() + _LEAVE_RETRY_S >= give_up_at:
                logger.warning("Could not leave the admission queue (%s); the entry expires", exc)
                return
            logger.warning("Leaving the admission queue failed (%s); retrying", exc)
            await asyncio.sleep(_LEAVE_RETRY_S)


async def _beat(queue: AdmissionQueue, ticket_id: str, ttl_s: float) -> None:
    while True:
        await asyncio.sleep(ttl_s / 3)
        try:
            if not await queue.heartbeat(ticket_id, ttl_s):
                logger.warning(
                    "Admission ticket %s expired while holding GPUs; the Prefect limit "
                    "still caps them, but admission order is lost for this job",
                    ticket_id,
                )
                return
        except AdmissionError as exc:
            logger.warning("Admission heartbeat failed (%s); retrying", exc)
