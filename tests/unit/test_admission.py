"""The admission policy: order by priority then arrival, reservations, GPU types."""

from __future__ import annotations

import time

from gpuflow.gpu.admission.policy import QueueEntry, admissible


def _entry(
    name: str,
    slots: int,
    seq: int,
    rank: int = 1,
    admitted: bool = False,
    pools: tuple[str, ...] = ("gpu",),
) -> QueueEntry:
    return QueueEntry(name, pools, slots, rank, seq, "holder", admitted, time.time() + 60)


def test_waiting_entries_are_admitted_by_priority_then_arrival() -> None:
    entries = [
        _entry("batch-early", 1, seq=1, rank=2),
        _entry("normal", 1, seq=2, rank=1),
        _entry("high-late", 1, seq=3, rank=0),
    ]
    assert admissible(entries, {"gpu": 1}) == {"high-late"}
    assert admissible(entries, {"gpu": 2}) == {"high-late", "normal"}


def test_a_blocked_head_reserves_freed_slots_against_smaller_requests() -> None:
    running = [_entry(f"small-{i}", 1, seq=i, admitted=True) for i in range(3)]
    waiting = [_entry("big", 4, seq=10), _entry("small-late", 1, seq=11)]
    # One slot is free, but it belongs to the 4-GPU head: the late 1-GPU request waits.
    assert admissible(running + waiting, {"gpu": 4}) == {"small-0", "small-1", "small-2"}
    assert "big" in admissible(waiting, {"gpu": 4})


def test_a_reservation_in_one_gpu_type_does_not_block_another_type() -> None:
    both = ("gpu", "gpu:h100")
    entries = [
        _entry("h100-running", 2, seq=1, admitted=True, pools=both),
        _entry("h100-waiting", 1, seq=2, pools=both),
        _entry("a100-waiting", 1, seq=3, pools=("gpu", "gpu:a100")),
    ]
    capacity = {"gpu": 4, "gpu:h100": 2, "gpu:a100": 2}
    assert admissible(entries, capacity) == {"h100-running", "a100-waiting"}
