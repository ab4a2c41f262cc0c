"""Transmit-limited broadcast queue (memberlist's TransmitLimitedQueue; memberlist-wire.md 8.8).

Theory of operation: every broadcast is an already-encoded message (``bytes``) that rides on
outgoing packets (gossip rounds and piggybacking on pings, acks, indirect pings and nacks) until it
has been sent ``retransmit_mult * ceil(log10(n + 1))`` times, ``n`` being the member count *at the
time of sending*. Rules, as in memberlist 0.2.2:

1. A broadcast with a ``key`` (memberlist uses the node name) replaces any queued broadcast with the
   same key: news about node X makes older news about X worthless. Unkeyed broadcasts (user messages)
   never invalidate anything.
2. ``get_broadcasts(overhead, limit, n)`` fills a byte budget: each part costs ``len + overhead``.
   It walks transmit tiers from the fewest transmits up; inside a tier it takes the *largest* message
   that still fits, newest first among equal sizes. A message taken moves to the next tier (after the
   walk, so one call never takes it twice) or leaves the queue when it reached the limit.
3. Leaving the queue (limit reached, invalidated, pruned) marks the ``Broadcast`` as ``done``; the
   facade watches its leave broadcast's flag to know when the leave has drained.

Each tier is a list kept sorted by ``(-len, -id)`` so "largest that fits" is one bisection: picking
is O(tiers * log n), not a scan of the queue.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from meshnet.gossip.util import retransmit_limit

__all__ = ["Broadcast", "BroadcastQueue"]

_MIN_ID = -(2**63)


class Broadcast:
    """One queued message and its bookkeeping. ``done`` turns True when it leaves the queue."""

    __slots__ = ("key", "msg", "transmits", "id", "done", "entry")

    def __init__(self, key: str | None, msg: bytes, bid: int) -> None:
        self.key = key
        self.msg = msg
        self.transmits = 0
        self.id = bid
        self.done = False
        #: The sort entry in its tier list: largest first, then newest first.
        self.entry = (-len(msg), -bid, self)

    def __repr__(self) -> str:
        return f"Broadcast(key={self.key!r}, len={len(self.msg)}, transmits={self.transmits})"


class BroadcastQueue:
    """Broadcasts waiting to be piggybacked or gossiped, each sent a limited number of times."""

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        self._tiers: dict[int, list[tuple[int, int, Broadcast]]] = {}
        self._by_key: dict[str, Broadcast] = {}
        self._len = 0
        self._next_id = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Broadcast]:
        """Queued broadcasts in sending order (fewest transmits, largest, newest first)."""
        for t in sorted(self._tiers):
            for _, _, b in self._tiers[t]:
                yield b

    def queue(self, msg: bytes, key: str | None = None) -> Broadcast:
        """Queue ``msg``; a ``key`` replaces a queued broadcast with the same key."""
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._remove(old)
        self._next_id += 1
        b = Broadcast(key, msg, self._next_id)
        if key is not None:
            self._by_key[key] = b
        self._insert(b)
        return b

    def get_broadcasts(self, overhead: int, limit: int, num_nodes: int) -> list[bytes]:
        """Messages filling at most ``limit`` bytes (each costing ``len + overhead``); counts a transmit each."""
        if not self._len:
            return []
        transmit_limit = retransmit_limit(self.retransmit_mult, num_nodes)
        tiers = self._tiers
        bisect_left = bisect.bisect_left
        used = 0
        out: list[bytes] = []
        reinsert: list[Broadcast] = []
        for t in sorted(tiers):
            tier = tiers[t]
            while tier:
                free = limit - used - overhead
                if free <= 0:
                    break
                i = bisect_left(tier, (-free, _MIN_ID))
                if i >= len(tier):
                    break
                b = tier.pop(i)[2]
                msg = b.msg
                used += overhead + len(msg)
                out.append(msg)
                if b.transmits + 1 >= transmit_limit:
                    self._finish(b)
                else:
                    b.transmits += 1
                    reinsert.append(b)
            if not tier:
                del tiers[t]
            if limit - used - overhead <= 0:
                break
        self._len -= len(out)
        for b in reinsert:
            self._insert(b)
        return out

    def prune(self, max_retain: int) -> int:
        """Drop the most-sent (then smallest, oldest) broadcasts until at most ``max_retain`` remain."""
        dropped = 0
        while self._len > max_retain:
            t = max(self._tiers)
            tier = self._tiers[t]
            _, _, b = tier.pop()
            self._len -= 1
            if not tier:
                del self._tiers[t]
            self._finish(b)
            dropped += 1
        return dropped

    def clear(self) -> None:
        """Forget everything (each broadcast is marked done)."""
        for b in list(self):
            self._finish(b)
        self._tiers.clear()
        self._by_key.clear()
        self._len = 0

    # -- internals --------------------------------------------------------------------------------

    def _insert(self, b: Broadcast) -> None:
        tier = self._tiers.get(b.transmits)
        if tier is None:
            tier = self._tiers[b.transmits] = []
        bisect.insort(tier, b.entry)
        self._len += 1

    def _remove(self, b: Broadcast) -> None:
        tier = self._tiers[b.transmits]
        i = bisect.bisect_left(tier, (-len(b.msg), -b.id))
        assert tier[i][2] is b
        del tier[i]
        if not tier:
            del self._tiers[b.transmits]
        self._len -= 1
        b.done = True

    def _finish(self, b: Broadcast) -> None:
        b.done = True
        if b.key is not None and self._by_key.get(b.key) is b:
            del self._by_key[b.key]
