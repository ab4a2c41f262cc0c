"""Events the NetworkDB core emits (past tense, drained with ``NetworkDB.next_event()``).

Watch events (``EntryCreated``/``EntryUpdated``/``EntryDeleted``) carry the ``watch_id`` of the watch
they were produced for; one change matching two watches yields two events. They describe the watch's
*view*: live entries, minus hidden ones unless the watch was made with ``include_hidden``. So a node
failure yields ``EntryDeleted`` for the failed owner's entries, its return ``EntryCreated``, and a
graceful leave ``EntryDeleted`` only for entries still visible. The other events concern the whole core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

__all__ = [
    "WatchId",
    "RequestId",
    "EntryCreated",
    "EntryUpdated",
    "EntryDeleted",
    "NetworkSynced",
    "RequestReceived",
    "ResponseReceived",
    "RequestTimedOut",
    "PeerRefused",
    "ClusterIdSet",
    "HighWaterRaised",
    "MessageRejected",
    "WatchEvent",
    "NetworkDBEvent",
]

WatchId = NewType("WatchId", int)
RequestId = NewType("RequestId", int)


@dataclass(frozen=True, slots=True)
class EntryCreated:
    """An entry entered the watch's view (created, revealed, or replayed on subscribe)."""

    watch_id: WatchId
    table: str
    network: str
    key: str
    value: bytes
    owner: str
    ltime: int
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class EntryUpdated:
    """An entry in the view changed value (or owner)."""

    watch_id: WatchId
    table: str
    network: str
    key: str
    value: bytes
    owner: str
    ltime: int
    prev_value: bytes
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class EntryDeleted:
    """An entry left the view (deleted, hidden by its owner's failure, or removed); ``value`` is the
    last value the view had."""

    watch_id: WatchId
    table: str
    network: str
    key: str
    value: bytes
    owner: str
    ltime: int


@dataclass(frozen=True, slots=True)
class NetworkSynced:
    """The bulk sync started by ``join_network`` finished: ``peers`` answered, ``failed`` did not."""

    network: str
    peers: tuple[str, ...]
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A peer's direct request; answer with ``NetworkDB.respond(node, request_id, payload)``."""

    node: str
    request_id: RequestId
    payload: bytes


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The answer to ``NetworkDB.request``."""

    node: str
    request_id: RequestId
    payload: bytes


@dataclass(frozen=True, slots=True)
class RequestTimedOut:
    """No response within ``request_timeout``; a late response is dropped. Retrying is the caller's."""

    node: str
    request_id: RequestId


@dataclass(frozen=True, slots=True)
class PeerRefused:
    """A node of another cluster id sent us traffic; it is refused until it changes id (once per id)."""

    node: str
    cluster_id: str


@dataclass(frozen=True, slots=True)
class ClusterIdSet:
    """This node's cluster id was founded or adopted from a peer: persist it in the state directory."""

    cluster_id: str


@dataclass(frozen=True, slots=True)
class HighWaterRaised:
    """Persist ``high_water`` in the state directory *before* sending this step's outputs."""

    high_water: int


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A NetworkDB payload was dropped and counted (decode error, size, version)."""

    src: tuple[str, int]
    reason: str


WatchEvent = EntryCreated | EntryUpdated | EntryDeleted
NetworkDBEvent = (
    EntryCreated
    | EntryUpdated
    | EntryDeleted
    | NetworkSynced
    | RequestReceived
    | ResponseReceived
    | RequestTimedOut
    | PeerRefused
    | ClusterIdSet
    | HighWaterRaised
    | MessageRejected
)
