"""Durable state values (ipam.md 3.4) and the write-ahead outbox (3.1, 3.6).

Theory of operation. The state directory is a key-value map the shell keeps on disk; the core never
touches it. Every input that changes durable state ends with one ``Persist`` output listing the records to
put (a value) or delete (``None``), applied atomically by the shell. Keys:

    ("ident",)                       Identity: name, host, incarnation, boot generation, cluster id,
                                     retired / fenced
    ("global",)                      GlobalConfig of the VNI and pool spaces
    ("netcfg", network)              NetConfig of a network this node knows
    ("attached", network)            True while the node uses the network
    ("block", scope, space, k)       BlockState: hw epoch, believe, allocations, pending outbound grant
    ("view", scope, space, k)        ViewEntry: the best ownership record seen (the monotone view)
    ("remote", scope, space, offset) RemoteHolding: an address held here by proxy of its owner
    ("release", rid)                 PendingRelease: retried until the owner acknowledges
    ("asked", scope, space, tag)     owners asked for a proxy address for tag (released if unused)
    ("retired", node)                RetiredRecord of an identity known to be retired
    ("node", node)                   NodeRecord of a known identity (host, generation)

**Believer(n, b)** := n's durable ``BlockState`` of b has ``believe`` and the identity is neither retired
nor fenced. Only a believer allocates in a block or gives it away.

Write-ahead order. Outputs that follow from a decision (table writes, messages, result events) are
*staged* while an input runs; at its end the dirty records become one ``Persist(seq)`` and the staged
outputs are gated behind it: ``writes_to_send``/``messages_to_send``/``next_event`` release them only after
the shell called ``persisted(seq)``. A crash before that loses the decision and everything that followed
from it, which is exactly the state the restarted node resumes from (3.6 "Crash"). Outputs staged by an
input that changed nothing durable wait for the persists issued before them (FIFO), so no answer can
overtake the record that justifies it. ``unsafe_skip_write_ahead`` (tests only) releases at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from meshnet.core.errors import LocalProtocolError

from .records import Holder

__all__ = [
    "Identity",
    "BlockState",
    "RemoteHolding",
    "PendingRelease",
    "Persist",
    "TableWrite",
    "SendMessage",
    "Outbox",
    "DurableKey",
]

DurableKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """This node's IPAM identity. ``name`` is unique per identity (the agent uses ``HOST~8 hex digits of the
    incarnation``, meshnet/runtime/ipam_identity.py) and ``host`` is the host it runs on (the gossip member
    name); a state directory is made with a fresh random ``incarnation``, so a node without its directory
    is always a new identity of the same host (3.10)."""

    name: str
    host: str
    incarnation: int
    generation: int = 0
    cluster_id: str = ""
    retired: bool = False
    #: why this identity stopped believing (rolled-back state dir, retired by a reclaim while running)
    fenced: str = ""

    def with_(self, **changes: Any) -> Identity:
        return replace(self, **changes)


_EMPTY: Mapping[int, Holder] = {}


@dataclass(frozen=True, slots=True)
class BlockState:
    """One block as this node knows it durably. ``hw`` is the highest epoch the node has believed, granted,
    proposed or fenced; it never decreases (S4). ``believe`` means the node believes at ``hw``.
    ``granted_to`` is set while a grant issued at epoch ``granted_at`` is unconfirmed (resent until the
    target's held record appears); ``manifest`` is what that grant carries. ``granted_at`` is kept apart
    from ``hw`` because fencing a block for a reclaimer raises ``hw`` and must never re-date a grant. ``allocs`` maps offsets to holders and is
    only non-empty while believing. ``seq`` orders this node's record rewrites at one epoch."""

    hw: int = 0
    believe: bool = False
    allocs: Mapping[int, Holder] = field(default_factory=lambda: _EMPTY)
    granted_to: str = ""
    granted_at: int = 0
    manifest: tuple[tuple[int, str, str], ...] = ()
    seq: int = 0

    def with_(self, **changes: Any) -> BlockState:
        return replace(self, **changes)

    def with_alloc(self, offset: int, holder: Holder | None) -> BlockState:
        """A copy with ``offset`` allocated to ``holder`` (or freed for ``None``); the mapping is copied,
        never mutated, so a value handed to the shell stays as it was."""
        allocs = dict(self.allocs)
        if holder is None:
            allocs.pop(offset, None)
        else:
            allocs[offset] = holder
        return replace(self, allocs=allocs)

    def used(self) -> tuple[tuple[int, str, str], ...]:
        return tuple((o, h.node, h.tag) for o, h in sorted(self.allocs.items()))


@dataclass(frozen=True, slots=True)
class RemoteHolding:
    """An address this node holds by proxy: ``owner`` allocated it for ``tag``."""

    owner: str
    tag: str


@dataclass(frozen=True, slots=True)
class PendingRelease:
    """A release not yet acknowledged. ``offset`` -1: whatever ``owner`` holds for ``tag`` (an abandoned
    proxy request). ``owner`` "" means: the block's current owner in the view."""

    scope: str
    space: str
    offset: int
    tag: str
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Persist:
    """Records to write to the state directory, atomically, before calling ``persisted(seq)``.
    A value of ``None`` deletes the key."""

    seq: int
    records: tuple[tuple[DurableKey, Any], ...]


@dataclass(frozen=True, slots=True)
class TableWrite:
    """A NetworkDB write: ``put_entry`` of ``value``, or ``delete_entry`` when ``value`` is None (a missing
    entry is fine)."""

    table: str
    network: str
    key: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class SendMessage:
    """A direct message for ``node`` (NetworkDB ``request``; IPAM does its own retries and matching)."""

    node: str
    payload: bytes


class Outbox:
    """Staged outputs gated behind persists (see the module docstring)."""

    def __init__(self, *, write_ahead: bool = True) -> None:
        self.write_ahead = write_ahead
        self.issued = 0
        self.acked = 0
        self._dirty: dict[DurableKey, Any] = {}
        self._staged: list[object] = []
        self._gated: deque[tuple[int, object]] = deque()
        self._persists: list[Persist] = []
        self.writes: list[TableWrite] = []
        self.messages: list[SendMessage] = []
        self.events: deque[object] = deque()

    def put(self, key: DurableKey, value: Any) -> None:
        """Mark a durable record changed (``None`` deletes it)."""
        self._dirty[key] = value

    def stage(self, item: object) -> None:
        """An output that must not leave before this input's durable changes."""
        self._staged.append(item)

    def commit(self) -> None:
        """End of an input: issue the persist of the dirty records and gate the staged outputs."""
        if self._dirty:
            self.issued += 1
            self._persists.append(Persist(self.issued, tuple(self._dirty.items())))
            self._dirty = {}
        gate = self.issued if self.write_ahead else 0
        for item in self._staged:
            self._gated.append((gate, item))
        self._staged = []
        self._release()

    def ack(self, seq: int) -> None:
        if seq != self.acked + 1 or seq > self.issued:
            raise LocalProtocolError(f"persisted({seq}) out of order: expected {self.acked + 1}")
        self.acked = seq
        self._release()

    def take_persists(self) -> list[Persist]:
        out, self._persists = self._persists, []
        return out

    @property
    def pending_persists(self) -> int:
        return self.issued - self.acked

    def _release(self) -> None:
        gated = self._gated
        while gated and gated[0][0] <= self.acked:
            _, item = gated.popleft()
            if isinstance(item, TableWrite):
                self.writes.append(item)
            elif isinstance(item, SendMessage):
                self.messages.append(item)
            else:
                self.events.append(item)
