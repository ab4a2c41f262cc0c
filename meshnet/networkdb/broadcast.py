"""Per-network, transmit-limited broadcast queues for table events (libnetwork.md section 2.7).

Theory of operation: each joined network has one ``NetworkQueue`` of encoded table events. Every gossip
interval the facade takes datagram-sized batches and sends each batch to up to ``gossip_nodes`` random
peers of the network: ``gossip_packets`` batches, or as many as one transmit of every queued item needs
(``nbytes`` / budget) up to ``max_gossip_packets``, so a backlog drains at once instead of waiting out
the fixed budget. Every take counts one transmit of each item taken (an item goes at most once per
interval); a local write is dropped after ``retransmit_limit(retransmit_mult, n)`` transmits and a
rebroadcast after ``retransmit_limit(relay_retransmit_mult, n)`` (memberlist's TransmitLimitedQueue,
scaled by the network's size, not the cluster's; fewer relay transmits because every node relays
every event). Rules that fix libnetwork's queue failures:

1. Supersede only by a newer version (moby#53479): at most one item per (table, key); a new item
   replaces the queued one only if its precedence is greater; an older or equal one is refused. The
   facade only queues versions that won the merge, so this is also an internal invariant.
2. Local writes before rebroadcasts (moby#50193): items are taken in the order (local first, fewest
   transmits, latest to reach that transmit count first: newest first among fresh items), so a flood of
   rebroadcasts can delay a local write by at most the one gossip interval it waits for the next take.
3. Bounded and visible: at most ``max_len`` items. When full, the most-transmitted (then oldest)
   rebroadcast is evicted; a rebroadcast arriving at a queue full of local writes is dropped; only a queue full of
   local writes evicts a local write. Evictions are safe (anti-entropy carries every entry) and counted.

An item larger than the batch budget on its own is returned separately ("large"), to be sent reliably.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
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


class NetworkQueue:
    """The table-event queue of one network.

    Items live in buckets keyed by (class, transmits), each an insertion-ordered dict: a take walks the
    local buckets then the rebroadcast buckets by increasing transmits, newest-in-bucket first, and stops
    once the batch is full, so it costs about the batch size, not the queue length; eviction takes the
    oldest item of the highest rebroadcast bucket in O(number of buckets)."""

    __slots__ = ("max_len", "stats", "_items", "_buckets", "_seq", "_bytes")

    def __init__(self, *, max_len: int) -> None:
        self.max_len = max_len
        self.stats = QueueStats()
        self._items: dict[Hashable, QueueItem] = {}
        #: (0 local | 1 rebroadcast, transmits) -> keys, oldest first
        self._buckets: dict[tuple[int, int], dict[Hashable, None]] = {}
        self._seq = 0
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> QueueItem | None:
        return self._items.get(key)

    @property
    def nbytes(self) -> int:
        """Sum of the queued items' encoded sizes (what one transmit of every item would carry)."""
        return self._bytes

    @property
    def local_len(self) -> int:
        return sum(len(b) for (cls, _), b in self._buckets.items() if cls == 0)

    def _file(self, item: QueueItem) -> None:
        self._buckets.setdefault((0 if item.is_local else 1, item.transmits), {})[item.key] = None

    def _unfile(self, item: QueueItem) -> None:
        bk = (0 if item.is_local else 1, item.transmits)
        bucket = self._buckets[bk]
        del bucket[item.key]
        if not bucket:
            del self._buckets[bk]

    def _drop(self, item: QueueItem) -> None:
        self._unfile(item)
        del self._items[item.key]
        self._bytes -= len(item.raw)

    def enqueue(self, key: Hashable, precedence: Any, raw: bytes, *, is_local: bool) -> bool:
        """Queue an event; False if refused (not newer than the queued one, or full of local writes)."""
        existing = self._items.get(key)
        if existing is not None:
            if not precedence > existing.precedence:
                self.stats.refused_stale += 1
                return False
            self._drop(existing)
            self.stats.superseded += 1
        elif len(self._items) >= self.max_len and not self._evict_for(is_local):
            self.stats.dropped_full += 1
            return False
        self._seq += 1
        item = QueueItem(key, precedence, raw, is_local, 0, self._seq)
        self._items[key] = item
        self._bytes += len(raw)
        self._file(item)
        self.stats.enqueued += 1
        self.stats.max_len_seen = max(self.stats.max_len_seen, len(self._items))
        return True

    def _evict_for(self, is_local: bool) -> bool:
        classes = (1, 0) if is_local else (1,)
        for cls in classes:
            buckets = [bk for bk in self._buckets if bk[0] == cls]
            if buckets:
                bucket = self._buckets[max(buckets)]
                self._drop(self._items[next(iter(bucket))])
                self.stats.evicted += 1
                return True
        return False

    def take(
        self,
        budget_bytes: int,
        limit: int,
        *,
        skip: set[Hashable] | None = None,
        relay_limit: int | None = None,
    ) -> tuple[list[QueueItem], list[QueueItem]]:
        """One batch whose raw sizes sum to at most ``budget_bytes``, plus at most one item too large
        for any batch. Each item taken counts a transmit; a local write leaves the queue at ``limit``
        transmits, a rebroadcast at ``relay_limit`` (default ``limit``). Keys in ``skip`` (already sent
        this interval) are passed over; taken keys are added to it."""
        if relay_limit is None:
            relay_limit = limit
        batch: list[QueueItem] = []
        large: list[QueueItem] = []
        room = budget_bytes
        misses = 0
        for bk in sorted(self._buckets):
            for key in reversed(self._buckets[bk]):
                if skip is not None and key in skip:
                    continue
                item = self._items[key]
                size = len(item.raw)
                if size > budget_bytes:
                    if not large:
                        large.append(item)
                elif size <= room:
                    batch.append(item)
                    room -= size
                else:
                    misses += 1
                if room < 16 or misses > 32:
                    break
            if room < 16 or misses > 32:
                break
        for item in batch + large:
            if skip is not None:
                skip.add(item.key)
            self._unfile(item)
            item.transmits += 1
            self.stats.transmitted += 1
            if item.transmits >= (limit if item.is_local else relay_limit):
                del self._items[item.key]
                self._bytes -= len(item.raw)
                self.stats.completed += 1
            else:
                self._file(item)
        return batch, large

    def clear(self) -> None:
        self._items.clear()
        self._buckets.clear()
        self._bytes = 0
