"""The NetworkDB Lamport clock and its restart-safe high-water mark.

Theory of operation: one logical clock per node orders everything the node writes: table entries and
its own network attachments (libnetwork keeps two clocks; one is enough because every record also
carries its owner, and a single clock lets an attachment's ltime bound the ltimes of the owner's
entries, see ``attachments.py``). ``tick()`` returns a fresh time for a local write; ``witness(t)``
moves the clock past every time seen on the wire, so a later local write beats what was seen.

Restart safety (ipam.md 3.10, requirement R2): after a restart a node's writes must beat its own
pre-restart entries. The clock reserves times in blocks: ``high_water`` is an upper bound of every
time ever issued or witnessed. When the clock reaches it, ``high_water`` moves one block further and
``raised`` turns true. The shell persists ``high_water`` (in the state directory) before it sends the
outputs of that step; a restarted node starts its clock at the persisted value, so its first tick is
above everything it issued before. The block size only trades persistence frequency for gaps in time.
"""

from __future__ import annotations

from meshnet.core.errors import LocalProtocolError

__all__ = ["LamportClock", "MAX_LTIME"]

#: ltimes stay below 2**62 (the codec refuses larger), so the clock can never overflow uint64.
MAX_LTIME = 2**62


class LamportClock:
    """A Lamport clock with a reserved high-water mark."""

    __slots__ = ("_time", "_high_water", "_block", "raised")

    def __init__(self, *, start: int = 0, block: int = 1024) -> None:
        """Start at ``start`` (a persisted high-water mark, or 0); reserve ``block`` times at once."""
        if not 0 <= start < MAX_LTIME:
            raise LocalProtocolError(f"high-water mark {start} is outside 0..2**62")
        if block < 1:
            raise LocalProtocolError("high-water block must be >= 1")
        self._time = start
        self._block = block
        self._high_water = start
        #: True when ``high_water`` moved since the flag was last cleared by the owner.
        self.raised = False
        self._reserve()

    @property
    def time(self) -> int:
        """The last time issued or witnessed."""
        return self._time

    @property
    def high_water(self) -> int:
        """An upper bound of every time this clock issued or witnessed: persist it across restarts."""
        return self._high_water

    def tick(self) -> int:
        """A fresh time, greater than every time issued or witnessed so far."""
        self._time += 1
        self._reserve()
        return self._time

    def witness(self, ltime: int) -> None:
        """Move the clock to ``ltime`` if it is ahead (a time seen on the wire)."""
        if ltime > self._time:
            self._time = min(ltime, MAX_LTIME - self._block - 1)
            self._reserve()

    def _reserve(self) -> None:
        if self._time >= self._high_water:
            self._high_water = self._time + self._block
            self.raised = True
