"""NetworkDB wire messages as values (libnetwork.md section 2.2, reshaped).

Theory of operation: every NetworkDB payload is one ``Envelope``: who sent it (``sender``, the gossip
member name), the sender's cluster id (``""`` while it has none) and one body. The body's class decides
its ``Kind``, the append-only message code on the wire. How each travels:

| body               | path                                            | libnetwork counterpart       |
|--------------------|-------------------------------------------------|------------------------------|
| ``TableEvents``    | UDP user message to <= gossip_nodes network peers | compound of TableEvent       |
|                    | (TCP for an entry too large for a datagram)     |                              |
| ``AttachmentEvents``| gossip-layer broadcast (``Swim.send_user``)     | NetworkEvent                 |
| ``BulkSync``       | TCP user message to one peer, reply the same way | BulkSyncMessage             |
| ``StateSync``      | TCP user message to one node, reply the same way | NetworkPushPull (LocalState) |
| ``PushPullState``  | gossip-layer push-pull user state, if carried   | NetworkPushPull              |
| ``Request``/``Response`` | UDP or TCP user message to one node        | (none)                       |

Entries and attachments travel as ``WireEntry``/``WireAttachment``: like the local records, but a
tombstone's reap deadline becomes the *remaining* time in whole milliseconds (libnetwork: int32
seconds, which rounded to 0 and needed a mixed-version guard).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "Kind",
    "WireEntry",
    "WireAttachment",
    "TableEvents",
    "AttachmentEvents",
    "BulkSync",
    "SyncMode",
    "StateSync",
    "PushPullState",
    "Request",
    "Response",
    "Body",
    "Envelope",
    "KIND_OF",
]


class Kind(IntEnum):
    """Message codes. Append-only: never renumber, comment retired codes."""

    TABLE_EVENTS = 1
    ATTACHMENT_EVENTS = 2
    BULK_SYNC = 3
    STATE_SYNC = 4
    REQUEST = 5
    RESPONSE = 6
    PUSH_PULL = 7


@dataclass(frozen=True, slots=True)
class WireEntry:
    """An entry on the wire; its network is given by the enclosing message."""

    table: str
    key: str
    value: bytes
    owner: str
    ltime: int
    deleted: bool = False
    hidden: bool = False
    reap_in_ms: int = 0


@dataclass(frozen=True, slots=True)
class WireAttachment:
    node: str
    network: str
    ltime: int
    leaving: bool = False
    floor: int = 0
    reap_in_ms: int = 0


@dataclass(frozen=True, slots=True)
class TableEvents:
    """A gossip batch of one network's queue."""

    network: str
    entries: tuple[WireEntry, ...]


@dataclass(frozen=True, slots=True)
class AttachmentEvents:
    """Network joins and leaves, broadcast cluster-wide."""

    attachments: tuple[WireAttachment, ...]


class SyncMode(IntEnum):
    """The three messages of a bulk sync (append-only)."""

    #: requester -> peer: attachments and one digest per network, no entries
    REQUEST = 0
    #: peer -> requester: attachments, entries of the networks whose digests differ, ``want`` = those networks
    REPLY = 1
    #: requester -> peer, only if ``want`` was not empty: the requester's entries of those networks
    PUSH = 2


@dataclass(frozen=True, slots=True)
class BulkSync:
    """Anti-entropy for some networks (libnetwork's BulkSyncMessage, made digest-first).

    A ``REQUEST`` carries the requester's attachment records of ``networks`` and, per network, the XOR
    digest of its entries (``table.TableStore.digest``). The peer merges the attachments and answers
    with a ``REPLY`` (same ``sync_id``) for the networks both hold: its attachments, and its entries of
    every network whose digest differs, listed in ``want``; the reply is the acknowledgement. If ``want``
    is not empty the requester sends its own entries of those networks in a ``PUSH``. So two tables in
    sync cost two small messages, and any difference is repaired in both directions. Entries include
    tombstones (with remaining reap time) and hidden entries (flagged). A large message is split into
    ``parts`` messages; each part merges on its own and only the last one (``part == parts - 1``)
    triggers the next step."""

    sync_id: int
    mode: SyncMode
    part: int
    parts: int
    networks: tuple[str, ...]
    attachments: tuple[WireAttachment, ...]
    digests: tuple[tuple[str, int], ...]
    want: tuple[str, ...]
    sections: tuple[tuple[str, tuple[WireEntry, ...]], ...]


@dataclass(frozen=True, slots=True)
class StateSync:
    """Exchange of every attachment record known (NetworkDB's own push-pull), request and reply; split
    in ``parts`` like ``BulkSync``, the last part triggering the reply."""

    sync_id: int
    is_reply: bool
    part: int
    parts: int
    attachments: tuple[WireAttachment, ...]


@dataclass(frozen=True, slots=True)
class PushPullState:
    """The attachment list as gossip-layer push-pull user state."""

    attachments: tuple[WireAttachment, ...]


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Response:
    request_id: int
    payload: bytes


Body = TableEvents | AttachmentEvents | BulkSync | StateSync | PushPullState | Request | Response

KIND_OF: dict[type, Kind] = {
    TableEvents: Kind.TABLE_EVENTS,
    AttachmentEvents: Kind.ATTACHMENT_EVENTS,
    BulkSync: Kind.BULK_SYNC,
    StateSync: Kind.STATE_SYNC,
    PushPullState: Kind.PUSH_PULL,
    Request: Kind.REQUEST,
    Response: Kind.RESPONSE,
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """One NetworkDB payload."""

    sender: str
    cluster_id: str
    body: Body

    @property
    def kind(self) -> Kind:
        return KIND_OF[type(self.body)]
