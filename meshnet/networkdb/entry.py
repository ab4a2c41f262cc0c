"""NetworkDB records: table entries and network attachments, as immutable values.

Theory of operation: an ``Entry`` is the state of one slot ``(network, table, key)``: the value bytes,
who wrote it (``owner``), when (``ltime``, the owner's Lamport time), whether it is a tombstone
(``deleted``; a tombstone keeps the last value so delete watchers see what went), and two local-only
fields that never decide a merge: ``reap_at`` (the local instant a tombstone is forgotten; on the wire
it travels as the *remaining* time, ``reap_in_ms``) and ``hidden`` (the owner is failed in this node's
view: the entry is kept but readers and watchers do not see it).

Versions are totally ordered by ``(ltime, owner)`` (libnetwork compares ltime only, so two owners
writing a key at the same ltime diverged; libnetwork.md section 10). Two records with the same version
differ only when an owner reused a time (it lost its clock); ``precedence`` then breaks the tie by
``deleted`` (a tombstone beats a live value) and finally by the value bytes, so the merge is a maximum
over a total order: commutative, associative and idempotent (``table.merge``).

An ``Attachment`` is one node's membership of one network, written only by that node: ``leaving`` marks
a leave record (kept ``reap_network_interval``; while it stands, every entry of that node in that
network is refused, then it is reaped); ``floor`` is the ltime of the node's previous leave of that
network in its current life, so entries of an earlier attachment epoch (ltime <= floor) are refused
after a rejoin. An entry that overtakes its owner's join record is refused once and arrives again by a
retransmission or by anti-entropy, which carries attachments before entries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

__all__ = ["Version", "Entry", "Attachment", "Slot"]

#: Where an entry lives: (network, table, key).
Slot = tuple[str, str, str]


class Version(NamedTuple):
    """The version of a record: compared as (ltime, owner)."""

    ltime: int
    owner: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One table entry (or tombstone) as this node holds it."""

    table: str
    network: str
    key: str
    value: bytes
    owner: str
    ltime: int
    deleted: bool = False
    #: Tombstones only: the local instant (caller's monotonic seconds) the tombstone is reaped.
    reap_at: float | None = None
    #: The owner is failed in this node's view: kept, readable with ``include_hidden``, not watched.
    hidden: bool = False

    @property
    def slot(self) -> Slot:
        return (self.network, self.table, self.key)

    @property
    def version(self) -> Version:
        return Version(self.ltime, self.owner)

    @property
    def precedence(self) -> tuple[int, str, bool, bytes]:
        """The merge order: version, then tombstone over live, then value (only for reused times)."""
        return (self.ltime, self.owner, self.deleted, self.value)

    @property
    def is_live(self) -> bool:
        return not self.deleted

    def is_visible(self, *, include_hidden: bool = False) -> bool:
        """Live, and not hidden unless ``include_hidden``."""
        return not self.deleted and (include_hidden or not self.hidden)

    def remaining_reap(self, *, now: float) -> float:
        """Seconds until a tombstone is reaped (0 for live entries or overdue tombstones)."""
        if self.reap_at is None:
            return 0.0
        return max(0.0, self.reap_at - now)

    def with_(self, **changes: object) -> Entry:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Attachment:
    """Node ``node``'s membership of ``network``, versioned by the node's ``ltime``."""

    node: str
    network: str
    ltime: int
    leaving: bool = False
    #: Entries of ``node`` in ``network`` with ltime <= floor belong to an earlier epoch.
    floor: int = 0
    #: Leave records only: the local instant the record is reaped.
    reap_at: float | None = None

    @property
    def precedence(self) -> tuple[int, bool, int]:
        return (self.ltime, self.leaving, self.floor)

    def admits(self, ltime: int) -> bool:
        """Whether an entry of this node in this network with ``ltime`` may be (or stay) stored: none
        while the record is a leave (whatever its ltime: a node that lost its clock can leave at an
        ltime below entries of its previous life), and after a rejoin only those of the new epoch."""
        if self.leaving:
            return False
        return ltime > self.floor

    def with_(self, **changes: object) -> Attachment:
        return replace(self, **changes)  # type: ignore[arg-type]
