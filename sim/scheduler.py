"""Virtual-time event heap: the simulator's only clock and only loop.

Theory of operation. The simulated world runs on one thread and never reads a real clock. Time is an
integer number of microseconds (``t_us``); cores see it as float seconds (``t_us / 1e6``). Every
pending thing (a datagram in flight, a stream hop, a node's timer, a scenario action) is one heap
entry ``(t_us, seq, kind, a, b)``. ``seq`` is a global counter, so two entries due at the same
microsecond always pop in the order they were pushed and the tuple comparison never reaches the
payload. ``kind`` indexes a handler table that the owner (``sim.cluster.Cluster``) registers, and each
handler receives ``(t_us, a, b)``.

Timers are lazy: nothing is ever removed from the heap. The owner pushes a node's next deadline after
every step and ignores an entry that pops when it no longer matches the node's current deadline, which
keeps the heap at O(events in flight) without cancellation (style.md section 3.9).

``CALL`` entries run an arbitrary ``fn()`` and are how scenarios script crashes, partitions and
checks at given instants.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["Scheduler", "CALL", "US_PER_S", "to_us"]

#: Handler index reserved for scheduled callables.
CALL = 0
US_PER_S = 1_000_000


def to_us(seconds: float) -> int:
    """Seconds (float) to integer microseconds, rounded to the nearest microsecond."""
    return round(seconds * US_PER_S)


Handler = Callable[[int, Any, Any], None]


class Scheduler:
    """A heap of ``(t_us, seq, kind, a, b)`` entries popped in time order, ties by push order."""

    __slots__ = ("_heap", "_seq", "_handlers", "now_us", "events_run", "_stopped")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Any, Any]] = []
        self._seq = 0
        self._handlers: list[Handler | None] = [self._run_call]
        self.now_us = 0
        self.events_run = 0
        self._stopped = False

    def register(self, handler: Handler) -> int:
        """Add a handler; returns the ``kind`` to push entries for it with."""
        self._handlers.append(handler)
        return len(self._handlers) - 1

    @property
    def now(self) -> float:
        """Current virtual time in seconds."""
        return self.now_us / US_PER_S

    def push(self, t_us: int, kind: int, a: Any = None, b: Any = None) -> None:
        """Schedule ``handlers[kind](t_us, a, b)``. An instant in the past is clamped to now."""
        if t_us < self.now_us:
            t_us = self.now_us
        self._seq += 1
        heapq.heappush(self._heap, (t_us, self._seq, kind, a, b))

    def call_at(self, t_us: int, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` at virtual instant ``t_us``."""
        self.push(t_us, CALL, fn)

    def call_later(self, delay_us: int, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` ``delay_us`` microseconds from now."""
        self.push(self.now_us + delay_us, CALL, fn)

    def pending(self) -> int:
        """Entries in the heap (including stale timers not yet popped)."""
        return len(self._heap)

    def stop(self) -> None:
        """Make the running ``run_until`` return after the current entry."""
        self._stopped = True

    def run_until(self, t_us: int) -> None:
        """Pop and dispatch every entry due at or before ``t_us``; then time is ``t_us``.

        If a handler calls ``stop()``, return early with time left at that entry's instant.
        """
        heap = self._heap
        handlers = self._handlers
        pop = heapq.heappop
        self._stopped = False
        n = 0
        try:
            while heap and heap[0][0] <= t_us:
                t, _, kind, a, b = pop(heap)
                self.now_us = t
                n += 1
                handlers[kind](t, a, b)  # type: ignore[misc]
                if self._stopped:
                    return
            if t_us > self.now_us:
                self.now_us = t_us
        finally:
            self.events_run += n

    @staticmethod
    def _run_call(t_us: int, fn: Any, _b: Any) -> None:
        fn()
