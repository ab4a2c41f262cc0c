"""The pure merge of table entries, and the indexed store that holds them.

Theory of operation: the state of a slot ``(network, table, key)`` is a last-writer-wins register over
the total order ``Entry.precedence`` = (ltime, owner, deleted, value). ``merge(a, b)`` returns the
greater record; when both have the same precedence they are the same write, and the merge keeps the
earlier reap instant and the union of the hidden flags, so the result depends only on the *set* of
inputs: merge is commutative, associative and idempotent (tested as hypothesis properties). Consequences:
- a tombstone is never resurrected by an older create: the create has a smaller ltime, or the same
  version, where the tombstone wins the tie;
- two owners writing a key at the same ltime converge to the greater owner name (libnetwork diverged);
- a replayed or duplicated message is a no-op.
Reaping is the one place a record disappears without being merged away: a tombstone is reaped after
``reap_entry_interval``; a stale copy of the entry arriving after that is refused by the owner's
attachment record or corrected by the owner itself (see ``store.py``, "owner authority").

``TableStore`` is a plain index over entries: by slot, by network/table (walks in sorted order) and by
owner (hide/reveal/remove a node's entries without a scan). It makes no merge decisions. It also keeps,
per network, the XOR of a 64-bit BLAKE2b hash of every stored record's merge-relevant fields (slot,
precedence; not the local reap instant or hidden flag), updated in O(1) per change: two nodes holding
the same records of a network have the same ``digest``, which lets a bulk sync skip identical tables.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from hashlib import blake2b

from .entry import Entry, Slot

__all__ = ["merge", "compare", "merge_tables", "entry_hash", "TableStore"]


def entry_hash(e: Entry) -> int:
    """A 64-bit hash of an entry's slot and precedence (what two replicas must agree on): blake2b-64 of
    the length-prefixed (4-byte big-endian) table, key and owner, the 8-byte ltime, a tombstone byte and
    the value. Runs twice per changed entry (unindex, index): one join, lengths packed by a Struct."""
    t = e.table.encode("utf-8", "surrogatepass")
    k = e.key.encode("utf-8", "surrogatepass")
    o = e.owner.encode("utf-8", "surrogatepass")
    data = b"".join(
        (
            _LEN(len(t)),
            t,
            _LEN(len(k)),
            k,
            _LEN(len(o)),
            o,
            e.ltime.to_bytes(8, "big"),
            b"\x01" if e.deleted else b"\x00",
            e.value,
        )
    )
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


#: A 4-byte big-endian length prefix.
_LEN = struct.Struct(">I").pack


def compare(a: Entry, b: Entry) -> int:
    """-1, 0 or 1 as ``a``'s precedence is below, equal to or above ``b``'s."""
    pa, pb = a.precedence, b.precedence
    return (pa > pb) - (pa < pb)


def _min_reap(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def merge(a: Entry | None, b: Entry | None) -> Entry | None:
    """The winner of two records of one slot (``None`` is the empty record)."""
    if a is None:
        return b
    if b is None:
        return a
    c = compare(a, b)
    if c > 0:
        return a
    if c < 0:
        return b
    if a == b:
        return a
    return a.with_(reap_at=_min_reap(a.reap_at, b.reap_at), hidden=a.hidden or b.hidden)


def merge_tables(x: Mapping[Slot, Entry], y: Mapping[Slot, Entry]) -> dict[Slot, Entry]:
    """Slot-wise merge of two whole tables."""
    out = dict(x)
    for slot, entry in y.items():
        merged = merge(out.get(slot), entry)
        assert merged is not None
        out[slot] = merged
    return out


class TableStore:
    """Entries indexed by slot, by network and table, and by owner."""

    __slots__ = ("_nets", "_owners", "_live", "_digests")

    def __init__(self) -> None:
        #: network -> table -> key -> Entry
        self._nets: dict[str, dict[str, dict[str, Entry]]] = {}
        #: owner -> set of slots
        self._owners: dict[str, set[Slot]] = {}
        #: (network, table) -> live entries
        self._live: dict[tuple[str, str], int] = {}
        #: network -> XOR of entry_hash over its entries
        self._digests: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(t) for tables in self._nets.values() for t in tables.values())

    def get(self, slot: Slot) -> Entry | None:
        network, table, key = slot
        tables = self._nets.get(network)
        if tables is None:
            return None
        keys = tables.get(table)
        return None if keys is None else keys.get(key)

    def tables_of(self, network: str) -> Mapping[str, Mapping[str, Entry]] | None:
        """A read-only view (do not modify) of one network's ``{table: {key: entry}}``, for the receive
        path's per-copy duplicate check; None if the network holds nothing yet."""
        return self._nets.get(network)

    def put(self, entry: Entry) -> Entry | None:
        """Store ``entry`` in its slot unconditionally; return what was there."""
        network, table, key = entry.slot
        keys = self._nets.setdefault(network, {}).setdefault(table, {})
        prev = keys.get(key)
        keys[key] = entry
        if prev is not None:
            if prev.precedence == entry.precedence:
                return prev  # only local fields (reap instant, hidden) changed: indexes stay
            self._unindex(prev)
        self._index(entry)
        return prev

    def remove(self, slot: Slot) -> Entry | None:
        """Forget a slot; return what was there."""
        network, table, key = slot
        tables = self._nets.get(network)
        if tables is None:
            return None
        keys = tables.get(table)
        if keys is None or key not in keys:
            return None
        prev = keys.pop(key)
        self._unindex(prev)
        if not keys:
            del tables[table]
        if not tables:
            del self._nets[network]
        return prev

    def digest(self, network: str) -> int:
        """The XOR of ``entry_hash`` over the network's entries (0 when it has none)."""
        return self._digests.get(network, 0)

    def live_count(self, network: str, table: str) -> int:
        return self._live.get((network, table), 0)

    def networks(self) -> list[str]:
        return sorted(self._nets)

    def tables(self, network: str) -> list[str]:
        return sorted(self._nets.get(network, {}))

    def entries(self, network: str | None = None, table: str | None = None) -> Iterator[Entry]:
        """Every entry (tombstones too), sorted by network, table, key."""
        nets = [network] if network is not None else sorted(self._nets)
        for net in nets:
            tables = self._nets.get(net)
            if not tables:
                continue
            names = [table] if table is not None else sorted(tables)
            for name in names:
                keys = tables.get(name)
                if not keys:
                    continue
                for key in sorted(keys):
                    yield keys[key]

    def slots_of(self, owner: str, network: str | None = None) -> list[Slot]:
        """The slots whose entry ``owner`` wrote, sorted (optionally in one network)."""
        slots = self._owners.get(owner, ())
        return sorted(s for s in slots if network is None or s[0] == network)

    def owners(self) -> list[str]:
        return sorted(self._owners)

    def drop_network(self, network: str) -> list[Entry]:
        """Forget every entry of ``network``; return them sorted."""
        removed = list(self.entries(network))
        for entry in removed:
            self.remove(entry.slot)
        return removed

    def _index(self, entry: Entry) -> None:
        self._digests[entry.network] = self._digests.get(entry.network, 0) ^ entry_hash(entry)
        self._owners.setdefault(entry.owner, set()).add(entry.slot)
        if not entry.deleted:
            k = (entry.network, entry.table)
            self._live[k] = self._live.get(k, 0) + 1

    def _unindex(self, entry: Entry) -> None:
        d = self._digests.get(entry.network, 0) ^ entry_hash(entry)
        if d:
            self._digests[entry.network] = d
        else:
            self._digests.pop(entry.network, None)
        slots = self._owners.get(entry.owner)
        if slots is not None:
            slots.discard(entry.slot)
            if not slots:
                del self._owners[entry.owner]
        if not entry.deleted:
            k = (entry.network, entry.table)
            n = self._live[k] - 1
            if n:
                self._live[k] = n
            else:
                del self._live[k]
