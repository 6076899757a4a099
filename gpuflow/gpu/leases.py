"""GPU slots of Prefect global concurrency limits, held under a lease we know the id of.

The same server calls as ``prefect.concurrency.asyncio.concurrency(..., strict=True,
lease_duration=...)``, with two differences that matter for GPU jobs:

- the lease id is handed to the caller, so the job registry can record it and the
  reconciliation step can release the slots of a holder that died;
- renewal rides out a Prefect server restart: a failed renewal is retried until the
  lease would really have expired (Prefect's own keeper gives up after 3 tries, about
  3 s, and would kill a job that holds a 5-minute lease over a 15-second restart).
  When the server says the lease is gone, the job is stopped: its GPUs are no longer
  accounted for, and running on would break the cap.

A lease can also be handed from a finished holder to the next one (``handed`` and
``pass_on``): the server binds a lease to its id only, not to the client that took it, so
the receiver renews and releases it like its own, and the slots never leave the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse

from gpuflow.core.errors import GpuCapacityError, GpuflowError
from gpuflow.gpu.admission.base import AdmissionError, HandedLease

logger = logging.getLogger(__name__)

_RETRY_S = 2.0  # between tries of a renewal or release while the server is unreachable
_RELEASE_PATIENCE_S = 60.0  # how long a release keeps trying before leaving it to expiry
_MAX_WAIT_S = 5.0  # longest pause between acquisition attempts (Retry-After is capped)
# Pauses before the first tries again when the slots should be free (admitted by the
# queue): a 423 then is a release still on its way, not a full limit worth Retry-After.
_QUICK_RETRIES_S = (0.02, 0.05, 0.1, 0.2, 0.4)


class LeaseLostError(GpuflowError):
    """The server no longer holds our lease: the job was stopped to keep the GPU cap."""

    retryable = True


@dataclass(frozen=True)
class GpuLease:
    lease_id: UUID
    names: tuple[str, ...]
    slots: int
    duration_s: float


async def acquire_gpu_slots(
    names: list[str],
    slots: int,
    lease_s: float,
    holder: ConcurrencyLeaseHolder | None,
    expect_free: bool = False,
) -> GpuLease:
    """Wait until ``slots`` of every limit in ``names`` are granted under one lease.

    ``expect_free`` (the admission queue has just admitted us): the first refusals are
    retried within a fraction of a second, before the server's Retry-After is followed."""
    quick_retries = list(_QUICK_RETRIES_S if expect_free else ())
    async with get_client() as client:
        while True:
            request = asyncio.ensure_future(
                client.increment_concurrency_slots_with_lease(
                    names=names,
                    slots=slots,
                    mode="concurrency",
                    lease_duration=lease_s,
                    holder=holder,
                )
            )
            try:
                response = await asyncio.shield(request)
            except asyncio.CancelledError:
                # The server may grant the slots after we are gone: give them straight back.
                request.add_done_callback(_release_if_granted)
                raise
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 423:
                    # Busy: holders the admission queue does not know of (outside gpuflow, or
                    # leases of dead holders not yet expired) still occupy the limit.
                    if quick_retries:
                        await asyncio.sleep(quick_retries.pop(0))
                        continue
                    wait = min(
                        max(float(exc.response.headers.get("Retry-After", 1)), 0.1), _MAX_WAIT_S
                    )
                    logger.info("The limits %s are full; trying again in %.1fs", names, wait)
                    await asyncio.sleep(wait)
                    continue
                if exc.response.status_code == 422:
                    raise GpuCapacityError(
                        f"the Prefect server refused gpus={slots} on the limits {names}: "
                        f"{exc.response.text}"
                    ) from None
                raise
            granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
            found = {limit.name for limit in granted.limits}
            if set(names) - found:
                if granted.limits:
                    await client.release_concurrency_slots_with_lease(granted.lease_id)
                missing = sorted(set(names) - found)
                raise GpuCapacityError(
                    f"no active GPU limit named {missing[0]!r}: create it with "
                    "`gpuflow bootstrap` (or `prefect gcl create`)"
                )
            return GpuLease(granted.lease_id, tuple(names), slots, lease_s)


def _release_if_granted(request: asyncio.Future[httpx.Response]) -> None:
    if request.cancelled() or request.exception() is not None:
        return
    granted = ConcurrencyLimitWithLeaseResponse.model_validate(request.result().json())
    if granted.limits:
        release_in_background(granted.lease_id)


def release_in_background(lease_id: UUID) -> None:
    """Give a lease's slots back from a task nobody waits for (its taker was cancelled)."""
    release = asyncio.ensure_future(release_gpu_slots(lease_id))
    _background.add(release)
    release.add_done_callback(_background.discard)


_background: set[asyncio.Future[bool]] = set()


async def release_gpu_slots(lease_id: UUID, patience_s: float = _RELEASE_PATIENCE_S) -> bool:
    """Give the slots back; keep trying while the server restarts. False if it never answered
    (the slots then return when the lease expires)."""
    deadline = time.monotonic() + patience_s
    async with get_client() as client:
        while True:
            try:
                await client.release_concurrency_slots_with_lease(lease_id)
                return True
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                    raise
                if time.monotonic() > deadline:
                    logger.warning(
                        "Could not release GPU lease %s (%s); its slots return when it expires",
                        lease_id,
                        exc,
                    )
                    return False
                await asyncio.sleep(_RETRY_S)


@dataclass
class _Validity:
    until: float  # time.monotonic() until which the server holds the lease


async def _keep_renewed(lease: GpuLease, renew_every_s: float, validity: _Validity) -> None:
    """Renew every ``renew_every_s`` (sooner while less than twice that is left, as for a
    handed lease); retry failures until the lease would have expired.

    Returns only when the lease is lost (the server answered 410 Gone, or never answered
    before the lease ran out)."""
    async with get_client() as client:
        while True:
            left_s = max(validity.until - time.monotonic(), 0)
            await asyncio.sleep(min(renew_every_s, left_s / 2))
            while True:
                try:
                    await client.renew_concurrency_lease(lease.lease_id, lease.duration_s)
                    validity.until = time.monotonic() + lease.duration_s
                    break
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code == 410:
                        return
                    error: Exception = exc
                except httpx.TransportError as exc:
                    error = exc
                if time.monotonic() + _RETRY_S >= validity.until:
                    return
                logger.warning("Renewing GPU lease %s failed (%s); retrying", lease.lease_id, error)
                await asyncio.sleep(_RETRY_S)


@contextlib.asynccontextmanager
async def held_gpu_slots(
    names: list[str],
    slots: int,
    lease_s: float,
    holder: ConcurrencyLeaseHolder | None = None,
    renew_every_s: float | None = None,
    expect_free: bool = False,
    handed: HandedLease | None = None,
    pass_on: Callable[[HandedLease], Awaitable[bool]] | None = None,
) -> AsyncIterator[GpuLease]:
    """Hold ``slots`` of each limit for the ``async with`` body, renewed (every third of the
    lease unless ``renew_every_s`` says otherwise); released on any exit.

    ``handed``: a lease a finished holder passed on, held as it is (no request to take
    slots). ``pass_on``: after a body that returned, offer the lease to the next holder
    (True: taken, not released); only a lease with half its duration left is offered.

    If the lease is lost, the body is cancelled and ``LeaseLostError`` raised."""
    if handed is None:
        lease = await acquire_gpu_slots(names, slots, lease_s, holder, expect_free)
        validity = _Validity(time.monotonic() + lease_s)
    else:
        lease = GpuLease(UUID(handed.lease_id), tuple(names), slots, lease_s)
        validity = _Validity(time.monotonic() + min(handed.valid_until - time.time(), lease_s))
    body = asyncio.current_task()
    assert body is not None
    lost = False
    returned = False

    async def keeper() -> None:
        nonlocal lost
        await _keep_renewed(lease, renew_every_s or lease_s / 3, validity)
        lost = True
        body.cancel()

    renewal = asyncio.create_task(keeper())
    try:
        yield lease
        returned = True
    except asyncio.CancelledError:
        if lost and body.uncancel() == 0:
            raise LeaseLostError(
                f"the Prefect server lost GPU lease {lease.lease_id} on {list(names)}; "
                "the job was stopped so that no more than the limit's GPUs run"
            ) from None
        raise
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        offer = returned and not lost and validity.until - time.monotonic() >= lease_s / 2
        # Shielded: a cancelled run must still give its slots back.
        await asyncio.shield(_pass_on_or_release(lease, validity, pass_on if offer else None))


async def _pass_on_or_release(
    lease: GpuLease,
    validity: _Validity,
    pass_on: Callable[[HandedLease], Awaitable[bool]] | None,
) -> None:
    if pass_on is not None:
        valid_until = time.time() + validity.until - time.monotonic()
        try:
            if await pass_on(HandedLease(str(lease.lease_id), valid_until)):
                return
        except AdmissionError as exc:
            logger.warning("Could not hand GPU lease %s on (%s); releasing it", lease.lease_id, exc)
    await release_gpu_slots(lease.lease_id)
