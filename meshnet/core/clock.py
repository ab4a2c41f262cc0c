"""Deadlines for pure cores.

Theory of operation: a core never owns a timer. It keeps deadlines (absolute instants in the
caller's monotonic seconds) in a ``DeadlineHeap``; the shell asks ``next_deadline()`` and calls the
core's ``handle_timer(now=...)`` when that instant has passed. Cancelling or moving a deadline bumps
the key's generation, so a stale heap entry is recognised and skipped when it surfaces (the
memberlist ``StateChange`` trick, made explicit). Ties are broken by insertion order, so the same
inputs always fire in the same order.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

__all__ = ["DeadlineHeap"]


class DeadlineHeap:
    """A set of named deadlines: at most one live deadline per key."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable, int]] = []
        self._gen: dict[Hashable, int] = {}
        self._live: dict[Hashable, float] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def set(self, key: Hashable, at: float) -> None:
        """Arm (or move) the deadline for ``key`` to instant ``at``."""
        gen = self._gen.get(key, 0) + 1
        self._gen[key] = gen
        self._live[key] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, key, gen))

    def cancel(self, key: Hashable) -> None:
        """Forget the deadline for ``key``; a missing key is fine."""
        if key in self._live:
            del self._live[key]
            self._gen[key] = self._gen.get(key, 0) + 1

    def get(self, key: Hashable) -> float | None:
        """The instant ``key`` is armed for, or None."""
        return self._live.get(key)

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when nothing is armed."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """Remove and return, in firing order, every key whose deadline is <= now."""
        due: list[Hashable] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key, _ = heapq.heappop(self._heap)
            del self._live[key]
            self._gen[key] += 1
            due.append(key)

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            _, _, key, gen = heap[0]
            if self._gen.get(key) == gen and key in self._live:
                return
            heapq.heappop(heap)
