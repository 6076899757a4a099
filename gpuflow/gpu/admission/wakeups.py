"""Waking the waiters of this process when their ticket may have been admitted."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Iterator


class LocalWakeups:
    """One event per waiting ticket of this process; set from any thread or event loop
    (a ticket's waiter sleeps on it between checks, its poll interval being the fallback)."""

    def __init__(self) -> None:
        self._events: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def register(self, ticket_id: str) -> Iterator[asyncio.Event]:
        token = (asyncio.get_running_loop(), asyncio.Event())
        with self._guard:
            self._events.setdefault(ticket_id, set()).add(token)
        try:
            yield token[1]
        finally:
            with self._guard:
                tokens = self._events.get(ticket_id, set())
                tokens.discard(token)
                if not tokens:
                    self._events.pop(ticket_id, None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._events)

    def wake(self, ticket_ids: Iterable[str]) -> None:
        with self._guard:
            tokens = [token for ticket in ticket_ids for token in self._events.get(ticket, ())]
        self._set(tokens)

    def ticket_ids(self) -> list[str]:
        with self._guard:
            return list(self._events)

    @staticmethod
    def _set(tokens: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        for loop, event in tokens:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)
