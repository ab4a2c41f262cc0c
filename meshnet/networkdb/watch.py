"""Watches: filtered views of the tables, turned into create/update/delete events.

Theory of operation: a watch is a filter (table, network, key; ``None`` matches anything; the global
network is the empty string, so it is not a wildcard) and a view rule: an entry is in the view when it
is live and, unless the watch has ``include_hidden``, not hidden. Every change of a slot passes through
``Watchers.diff(before, after)``, which compares the slot's membership of each matching watch's view
before and after and emits exactly one event per watch whose view changed:

    in view before | in view after | event
    no             | yes           | EntryCreated
    yes            | no            | EntryDeleted (with the last value in the view)
    yes            | yes           | EntryUpdated if value or owner changed, else nothing

So hiding a failed owner's entries yields deletes, revealing them creates, and an ltime-only change
(an owner re-asserting its entry) nothing. ``replay`` yields the view's current content as creates,
in sorted order, when a watch subscribes (libnetwork replays for driver watches only).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .entry import Entry
from .events import EntryCreated, EntryDeleted, EntryUpdated, WatchEvent, WatchId

__all__ = ["WatchFilter", "Watchers"]


@dataclass(frozen=True, slots=True)
class WatchFilter:
    table: str | None = None
    network: str | None = None
    key: str | None = None
    include_hidden: bool = False

    def matches(self, entry: Entry) -> bool:
        return (
            (self.table is None or self.table == entry.table)
            and (self.network is None or self.network == entry.network)
            and (self.key is None or self.key == entry.key)
        )


def _created(wid: WatchId, e: Entry) -> EntryCreated:
    return EntryCreated(wid, e.table, e.network, e.key, e.value, e.owner, e.ltime, e.hidden)


class Watchers:
    """The registry of watches."""

    __slots__ = ("_watches", "_next")

    def __init__(self) -> None:
        self._watches: dict[WatchId, WatchFilter] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, wid: object) -> bool:
        return wid in self._watches

    def add(self, flt: WatchFilter) -> WatchId:
        wid = WatchId(self._next)
        self._next += 1
        self._watches[wid] = flt
        return wid

    def remove(self, wid: WatchId) -> bool:
        return self._watches.pop(wid, None) is not None

    def get(self, wid: WatchId) -> WatchFilter | None:
        return self._watches.get(wid)

    def replay(self, wid: WatchId, entries: Iterable[Entry]) -> list[WatchEvent]:
        flt = self._watches[wid]
        return [
            _created(wid, e)
            for e in entries
            if flt.matches(e) and e.is_visible(include_hidden=flt.include_hidden)
        ]

    def diff(self, before: Entry | None, after: Entry | None) -> list[WatchEvent]:
        """Events for every watch whose view changed when a slot went from ``before`` to ``after``."""
        if not self._watches:
            return []
        probe = after if after is not None else before
        if probe is None:
            return []
        out: list[WatchEvent] = []
        for wid, flt in self._watches.items():
            if not flt.matches(probe):
                continue
            vb = before is not None and before.is_visible(include_hidden=flt.include_hidden)
            va = after is not None and after.is_visible(include_hidden=flt.include_hidden)
            if va and not vb:
                assert after is not None
                out.append(_created(wid, after))
            elif vb and not va:
                assert before is not None
                out.append(
                    EntryDeleted(
                        wid,
                        before.table,
                        before.network,
                        before.key,
                        before.value,
                        before.owner,
                        before.ltime,
                    )
                )
            elif va and vb:
                assert before is not None and after is not None
                if before.value != after.value or before.owner != after.owner:
                    out.append(
                        EntryUpdated(
                            wid,
                            after.table,
                            after.network,
                            after.key,
                            after.value,
                            after.owner,
                            after.ltime,
                            before.value,
                            after.hidden,
                        )
                    )
        return out
