"""NetworkDB: partitioned, convergent tables over the gossip cluster, as a pure (sans-IO) core.

``NetworkDB`` (``store.py``) is the facade; ``Entry``/``Attachment`` the records; ``table.merge`` the
merge; ``codec``/``messages`` the wire; ``config`` the presets. See each module's theory of operation.
"""

from .config import GLOBAL_NETWORK, PREFIX, NetworkDBConfig, fast, lan, local, wan
from .entry import Attachment, Entry, Version
from .events import (
    ClusterIdSet,
    EntryCreated,
    EntryDeleted,
    EntryUpdated,
    HighWaterRaised,
    MessageRejected,
    NetworkDBEvent,
    NetworkSynced,
    PeerRefused,
    RequestId,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    WatchEvent,
    WatchId,
)
from .store import NetworkDB, OutboundMessage
from .table import merge

__all__ = [
    "NetworkDB",
    "OutboundMessage",
    "NetworkDBConfig",
    "lan",
    "wan",
    "local",
    "fast",
    "GLOBAL_NETWORK",
    "PREFIX",
    "Entry",
    "Attachment",
    "Version",
    "merge",
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
    "NetworkDBEvent",
    "WatchEvent",
    "WatchId",
    "RequestId",
]
