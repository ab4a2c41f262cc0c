"""Per-network, transmit-limited broadcast queues for table events (libnetwork.md section 2.7).

Theory of operation: each joined network has one ``NetworkQueue`` of encoded table events. Every gossip
interval the facade takes up to ``gossip_packets`` batches that fit a datagram and sends each batch to
up to ``gossip_nodes`` random peers of the network; every take counts one transmit of each item taken,
and an item is dropped after ``retransmit_limit(mult, n)`` transmits (memberlist's TransmitLimitedQueue,
scaled by the network's size, not the cluster's). Rules that fix libnetwork's queue failures:

1. Supersede only by a newer version (moby#53479): at most one item per (table, key); a new item
   replaces the queued one only if its precedence is greater; an older or equal one is refused. The
   facade only queues versions that won the merge, so this is also an internal invariant.
2. Local writes before rebroadcasts (moby#50193): items are taken in the order (local first, fewest
   transmits, newest), so a flood of rebroadcasts can delay a local write by at most the one gossip
   interval it waits for the next take.
3. Bounded and visible: at most ``max_len`` items. When full, the most-transmitted, oldest rebroadcast
   is evicted; a rebroadcast arriving at a queue full of local writes is dropped; only a queue full of
   local writes evicts a local write. Evictions are safe (anti-entropy carries every entry) and counted.

An item larger than the batch budget on its own is returned separately ("large"), to be sent reliably.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["QueueItem", "QueueStats", "NetworkQueue"]


@dataclass(slots=True)
class QueueItem:
    """One queued table event."""

    key: Hashable
    precedence: Any
    raw: bytes
    is_local: bool
    transmits: int = 0
    seq: int = 0

    def order(self) -> tuple[int, int, int]:
        """Sort key: local first, then fewest transmits, then newest."""
        return (0 if self.is_local else 1, self.transmits, -self.seq)


@dataclass(slots=True)
class QueueStats:
    enqueued: int = 0
    superseded: int = 0
    refused_stale: int = 0
    evicted: int = 0
    dropped_full: int = 0
    transmitted: int = 0
    completed: int = 0
    max_len_seen: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "enqueued": self.enqueued,
            "superseded": self.superseded,
            "refused_stale": self.refused_stale,
            "evicted": self.evicted,
            "dropped_full": self.dropped_full,
            "transmitted": self.transmitted,
            "completed": self.completed,
            "max_len_seen": self.max_len_seen,
        }


@dataclass(slots=True)
class NetworkQueue:
    """The table-event queue of one network."""

    max_len: int
    stats: QueueStats = field(default_factory=QueueStats)
    _items: dict[Hashable, QueueItem] = field(default_factory=dict)
    _seq: int = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> QueueItem | None:
        return self._items.get(key)

    @property
    def local_len(self) -> int:
        return sum(1 for i in self._items.values() if i.is_local)

    def enqueue(self, key: Hashable, precedence: Any, raw: bytes, *, is_local: bool) -> bool:
        """Queue an event; False if refused (not newer than the queued one, or full of local writes)."""
        existing = self._items.get(key)
        if existing is not None:
            if not precedence > existing.precedence:
                self.stats.refused_stale += 1
                return False
            del self._items[key]
            self.stats.superseded += 1
        elif len(self._items) >= self.max_len and not self._evict_for(is_local):
            self.stats.dropped_full += 1
            return False
        self._seq += 1
        self._items[key] = QueueItem(key, precedence, raw, is_local, 0, self._seq)
        self.stats.enqueued += 1
        self.stats.max_len_seen = max(self.stats.max_len_seen, len(self._items))
        return True

    def _evict_for(self, is_local: bool) -> bool:
        relays = [i for i in self._items.values() if not i.is_local]
        pool = relays if relays else ([i for i in self._items.values()] if is_local else [])
        if not pool:
            return False
        victim = max(pool, key=lambda i: (i.transmits, -i.seq))
        del self._items[victim.key]
        self.stats.evicted += 1
        return True

    def take(self, budget_bytes: int, limit: int) -> tuple[list[QueueItem], list[QueueItem]]:
        """One batch whose raw sizes sum to at most ``budget_bytes``, plus at most one item too large
        for any batch. Each item taken counts a transmit and leaves the queue at ``limit`` transmits."""
        batch: list[QueueItem] = []
        large: list[QueueItem] = []
        room = budget_bytes
        for item in sorted(self._items.values(), key=QueueItem.order):
            size = len(item.raw)
            if size > budget_bytes:
                if not large:
                    large.append(item)
            elif size <= room:
                batch.append(item)
                room -= size
            if room < 16 and large:
                break
        for item in batch + large:
            item.transmits += 1
            self.stats.transmitted += 1
            if item.transmits >= limit:
                del self._items[item.key]
                self.stats.completed += 1
        return batch, large

    def clear(self) -> None:
        self._items.clear()
