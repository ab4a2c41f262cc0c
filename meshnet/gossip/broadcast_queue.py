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

Layout, chosen because a join storm moves millions of parts through here: a tier is a dict of size
classes (message length -> list of broadcasts in ascending id order, so the newest is last) plus its
lengths sorted largest first. Rule 2 then takes whole runs: the largest class that fits gives its
newest ``k`` broadcasts, ``k`` being how many of that length still fit, with one slice; then the next
smaller class that fits, and so on. Messages of one kind mostly share a length (every ``alive`` of a
uniformly named cluster does), so a call costs a few slices instead of one bisection per part.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from operator import attrgetter

from meshnet.gossip.util import retransmit_limit

__all__ = ["Broadcast", "BroadcastQueue"]

_ID = attrgetter("id")


class Broadcast:
    """One queued message and its bookkeeping. ``done`` turns True when it leaves the queue."""

    __slots__ = ("key", "msg", "transmits", "id", "done")

    def __init__(self, key: str | None, msg: bytes, bid: int) -> None:
        self.key = key
        self.msg = msg
        self.transmits = 0
        self.id = bid
        self.done = False

    def __repr__(self) -> str:
        return f"Broadcast(key={self.key!r}, len={len(self.msg)}, transmits={self.transmits})"


class _Tier:
    """The broadcasts sent ``transmits`` times so far, by length."""

    __slots__ = ("classes", "neg_sizes")

    def __init__(self) -> None:
        #: length -> broadcasts of that length, ascending id (newest last).
        self.classes: dict[int, list[Broadcast]] = {}
        #: The lengths present, negated and ascending (largest length first).
        self.neg_sizes: list[int] = []

    def add(self, size: int, items: list[Broadcast]) -> None:
        """Merge ``items`` (ascending id, all of length ``size``) into the class."""
        cls = self.classes.get(size)
        if cls is None:
            self.classes[size] = items
            bisect.insort(self.neg_sizes, -size)
        elif cls[-1].id < items[0].id:
            cls += items
        else:
            p = bisect.bisect_left(cls, items[0].id, key=_ID)
            if items[-1].id < cls[p].id:
                cls[p:p] = items  # the run falls between two neighbours
            else:
                insort = bisect.insort
                for b in items:
                    insort(cls, b, key=_ID)

    def drop_class(self, size: int) -> None:
        del self.classes[size]
        neg = self.neg_sizes
        del neg[bisect.bisect_left(neg, -size)]


class BroadcastQueue:
    """Broadcasts waiting to be piggybacked or gossiped, each sent a limited number of times."""

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        self._tiers: dict[int, _Tier] = {}
        self._by_key: dict[str, Broadcast] = {}
        self._len = 0
        self._next_id = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Broadcast]:
        """Queued broadcasts in sending order (fewest transmits, largest, newest first)."""
        for t in sorted(self._tiers):
            tier = self._tiers[t]
            for neg in list(tier.neg_sizes):
                yield from reversed(tier.classes[-neg])

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
        tier = self._tiers.get(0)
        if tier is None:
            tier = self._tiers[0] = _Tier()
        size = len(msg)
        cls = tier.classes.get(size)
        if cls is None:
            tier.classes[size] = [b]
            bisect.insort(tier.neg_sizes, -size)
        else:
            cls.append(b)  # the newest id: always last
        self._len += 1
        return b

    def get_broadcasts(self, overhead: int, limit: int, num_nodes: int) -> list[bytes]:
        """Messages filling at most ``limit`` bytes (each costing ``len + overhead``); counts a transmit each."""
        if not self._len:
            return []
        transmit_limit = retransmit_limit(self.retransmit_mult, num_nodes)
        tiers = self._tiers
        used = 0
        out: list[bytes] = []
        moves: list[tuple[int, int, list[Broadcast]]] = []  # (next tier, size, run), applied after the walk
        finished: list[Broadcast] = []
        for t in sorted(tiers):
            tier = tiers[t]
            classes = tier.classes
            neg_sizes = tier.neg_sizes
            # The largest length that fits: each take needs len <= limit - used - overhead (and that > 0).
            j = bisect.bisect_left(neg_sizes, -(limit - used - overhead))
            while j < len(neg_sizes):
                size = -neg_sizes[j]
                cost = size + overhead
                room = limit - used - overhead - (size if size > 0 else 1)
                if room < 0:
                    j += 1
                    continue
                cls = classes[size]
                k = room // cost + 1 if cost else len(cls)
                if k >= len(cls):
                    run = cls
                    tier.drop_class(size)  # j now points at the next smaller length
                else:
                    run = cls[-k:]
                    del cls[-k:]
                    j += 1
                used += cost * len(run)
                out.extend([b.msg for b in reversed(run)])
                if t + 1 >= transmit_limit:
                    finished += run
                else:
                    moves.append((t + 1, size, run))
            if not classes:
                del tiers[t]
            if limit - used - overhead <= 0:
                break
        self._len -= len(finished)
        for b in finished:
            self._finish(b)
        for nt, size, run in moves:
            for b in run:
                b.transmits = nt
            tier = tiers.get(nt)
            if tier is None:
                tier = tiers[nt] = _Tier()
            tier.add(size, run)
        return out

    def prune(self, max_retain: int) -> int:
        """Drop the most-sent (then smallest, oldest) broadcasts until at most ``max_retain`` remain."""
        dropped = 0
        while self._len > max_retain:
            t = max(self._tiers)
            tier = self._tiers[t]
            size = -tier.neg_sizes[-1]
            cls = tier.classes[size]
            b = cls.pop(0)
            if not cls:
                tier.drop_class(size)
                if not tier.classes:
                    del self._tiers[t]
            self._len -= 1
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

    def _remove(self, b: Broadcast) -> None:
        tier = self._tiers[b.transmits]
        size = len(b.msg)
        cls = tier.classes[size]
        i = bisect.bisect_left(cls, b.id, key=_ID)
        assert cls[i] is b
        del cls[i]
        if not cls:
            tier.drop_class(size)
            if not tier.classes:
                del self._tiers[b.transmits]
        self._len -= 1
        b.done = True

    def _finish(self, b: Broadcast) -> None:
        b.done = True
        if b.key is not None and self._by_key.get(b.key) is b:
            del self._by_key[b.key]
