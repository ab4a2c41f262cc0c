"""The derived view (ipam.md 3.3, 3.8): per block, the best ownership record ever seen.

Theory of operation. Each node folds every ``ipam.block`` record it sees (hidden ones included) into one
entry per block, ordered by rank = (epoch, held over granted, writer, seq): a higher epoch wins; at one
epoch the new owner's confirming ``held`` beats the donor's ``granted``; ``seq`` orders one writer's hint
rewrites. Two chain records of one epoch naming different owners cannot happen by the lemma of 3.6; if it
does the view picks deterministically by writer and the core raises an alarm. ``reclaim`` records are kept
apart, as a status overlay (a reclaim in progress at a higher epoch than the chain).

The view is *monotone*: hiding, deleting (a graceful leave), reaping or losing a record never lowers it;
only a higher rank replaces an entry (S4). Blocks without any record default to their space's genesis
entry (epoch 1, held by the creator), which the immutable ``NetConfig``/``GlobalConfig`` implies, so a
network's 256 genesis records never need to be written. The view is persisted (on ownership changes) so a
restarted node still sees reaped space as locked, never free.

The view is only a routing hint (whom to ask, what status shows). It never licenses an allocation: only a
node's own durable belief does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .records import BlockRecord
from .space import Space, SpaceId

__all__ = ["ViewEntry", "ReclaimHint", "View", "genesis_entry"]


@dataclass(frozen=True, slots=True)
class ViewEntry:
    """The best chain record of a block: ``owner`` believes (held) or is the target (granted) at ``epoch``."""

    epoch: int
    state: str  # "held" | "granted"
    owner: str
    writer: str
    used: tuple[tuple[int, str, str], ...] = ()
    seq: int = -1

    @property
    def rank(self) -> tuple[int, int, str, int]:
        return (self.epoch, 1 if self.state == "held" else 0, self.writer, self.seq)

    @property
    def confirmed(self) -> bool:
        return self.state == "held"

    @classmethod
    def of(cls, rec: BlockRecord, writer: str) -> ViewEntry:
        writer = rec.origin or writer
        if rec.state == "held":
            return cls(rec.epoch, "held", writer, writer, rec.used, rec.seq)
        return cls(rec.epoch, "granted", rec.to, writer, rec.used, rec.seq)


@dataclass(frozen=True, slots=True)
class ReclaimHint:
    """The best reclaim record: higher epoch first, then the lower reclaimer name."""

    epoch: int
    by: str

    def beats(self, other: ReclaimHint | None) -> bool:
        return other is None or (self.epoch, other.by) > (other.epoch, self.by)


def genesis_entry(space: Space) -> ViewEntry:
    return ViewEntry(1, "held", space.creator, space.creator, (), -1)


class View:
    """Per block: the best chain entry (explicit) and the best reclaim hint."""

    def __init__(self) -> None:
        self._chain: dict[tuple[SpaceId, int], ViewEntry] = {}
        self._reclaim: dict[tuple[SpaceId, int], ReclaimHint] = {}
        #: local instant the current chain entry was first seen (relay timing; not persisted)
        self.seen_at: dict[tuple[SpaceId, int], float] = {}
        #: blocks whose best chain entry is a grant not yet confirmed by its target's held record
        self.unconfirmed: set[tuple[SpaceId, int]] = set()

    def __len__(self) -> int:
        return len(self._chain)

    def explicit(self, sid: SpaceId, k: int) -> ViewEntry | None:
        return self._chain.get((sid, k))

    def get(self, space: Space, k: int) -> ViewEntry:
        """The entry for block ``k`` of ``space`` (genesis if no record was seen)."""
        e = self._chain.get((space.id, k))
        return e if e is not None else genesis_entry(space)

    def reclaim_hint(self, sid: SpaceId, k: int) -> ReclaimHint | None:
        return self._reclaim.get((sid, k))

    def offer(self, sid: SpaceId, k: int, entry: ViewEntry, *, now: float) -> tuple[bool, bool]:
        """Fold a chain record in; returns (improved, ownership changed). Lower ranks are ignored."""
        cur = self._chain.get((sid, k))
        if cur is not None and entry.rank <= cur.rank:
            return False, False
        self._chain[(sid, k)] = entry
        self._track(sid, k, entry)
        changed = cur is None or (cur.epoch, cur.state, cur.owner) != (entry.epoch, entry.state, entry.owner)
        if changed:
            self.seen_at[(sid, k)] = now
        return True, changed

    def offer_reclaim(self, sid: SpaceId, k: int, hint: ReclaimHint) -> bool:
        if hint.beats(self._reclaim.get((sid, k))):
            self._reclaim[(sid, k)] = hint
            return True
        return False

    def restore(self, sid: SpaceId, k: int, entry: ViewEntry, *, now: float) -> None:
        self._chain[(sid, k)] = entry
        self._track(sid, k, entry)
        self.seen_at[(sid, k)] = now

    def _track(self, sid: SpaceId, k: int, entry: ViewEntry) -> None:
        if entry.state == "granted":
            self.unconfirmed.add((sid, k))
        else:
            self.unconfirmed.discard((sid, k))

    def items(self, sid: SpaceId | None = None) -> Iterator[tuple[tuple[SpaceId, int], ViewEntry]]:
        for key, e in self._chain.items():
            if sid is None or key[0] == sid:
                yield key, e

    def forget_space(self, sid: SpaceId) -> None:
        for d in (self._chain, self._reclaim, self.seen_at):
            for key in [key for key in d if key[0] == sid]:
                del d[key]
        self.unconfirmed = {key for key in self.unconfirmed if key[0] != sid}
