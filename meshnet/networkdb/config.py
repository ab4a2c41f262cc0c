"""NetworkDB configuration and presets (libnetwork.md section 2.12).

Theory of operation: every tunable of the NetworkDB core lives in one frozen dataclass. Durations are
float seconds; sizes are bytes. Where libnetwork has a constant, the default is libnetwork's value and
the field comment names it; where meshnet deviates (to fix a known failure, libnetwork.md section 9),
the comment says why. ``lan()`` is the default (libnetwork's numbers), ``wan()`` stretches the periods
like memberlist's WAN preset, ``local()`` shortens them for loopback clusters, and ``fast()`` makes
every period short so that unit tests and rule machines settle in a few simulated seconds.

Formulas (pure functions below):
- retransmit limit of a local write = ``retransmit_mult * ceil(log10(n + 1))`` where ``n`` is the number
  of live nodes attached to the event's network, self included (memberlist ``retransmitLimit``); of a
  rebroadcast the same with ``relay_retransmit_mult``;
- datagrams per peer per gossip interval = ``gossip_packets``, raised to what one transmit of every
  queued item needs, at most ``max_gossip_packets``;
- state-sync period = ``state_sync_interval * (ceil(log2(n) - 5) + 1)`` above 32 nodes, else the plain
  interval (memberlist ``pushPullScale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from meshnet.core.errors import ConfigError

__all__ = [
    "NetworkDBConfig",
    "lan",
    "wan",
    "local",
    "fast",
    "retransmit_limit",
    "state_sync_period",
    "PREFIX",
    "GLOBAL_NETWORK",
]

#: First byte of every NetworkDB payload. serf uses 0..9 for its user messages and ignores others.
PREFIX = 0x6E
#: Reserved network id of cluster-wide ("global") tables; every node joins it at construction.
GLOBAL_NETWORK = ""


@dataclass(frozen=True, slots=True)
class NetworkDBConfig:
    """Tunables of the NetworkDB core. Use ``lan()``, ``wan()``, ``local()`` or ``fast()``."""

    # -- table gossip (libnetwork cluster.go ``gossip``) --
    #: Each joined network's queue is gossiped this often (libnetwork GossipInterval 200 ms).
    gossip_interval: float = 0.2
    #: Peers of the network each batch goes to per interval (libnetwork mRandomNodes(3)).
    gossip_nodes: int = 3
    #: Datagrams per peer per interval when the queue is short. libnetwork sends one; two halve the
    #: drain time of a small burst.
    gossip_packets: int = 2
    #: Adaptive budget: when one transmit of every queued item needs more than ``gossip_packets``
    #: datagrams, up to this many go per peer per interval (so a backlog drains instead of waiting
    #: out its retransmits; bounded so a burst cannot flood a link). libnetwork has no such bound.
    max_gossip_packets: int = 32
    #: Budget of one gossip datagram's NetworkDB payload: PacketBufferSize 1400 minus memberlist
    #: framing (user-message byte, CRC, compound part, AES-GCM version/nonce/tag).
    packet_budget_bytes: int = 1300
    #: A local write is sent retransmit_mult * ceil(log10(n + 1)) times (libnetwork RetransmitMult 4).
    retransmit_mult: int = 4
    #: A rebroadcast (an event learned from a peer) is sent relay_retransmit_mult * ceil(log10(n + 1))
    #: times. libnetwork uses RetransmitMult for both; with every node relaying every event that many
    #: times, each node receives each event about 3 * 4 * ceil(log10(n + 1)) times, so throughput is
    #: capped by the queues (issue 3). Each relay still goes to ``gossip_nodes`` peers per transmit.
    relay_retransmit_mult: int = 1
    #: Hard bound of one network's queue; the oldest rebroadcasts are evicted first (then local writes,
    #: which anti-entropy still carries). libnetwork's queue is unbounded.
    max_queue_len: int = 4096
    #: Entries learned by bulk sync are rebroadcast only while the queue is shorter than this
    #: (libnetwork maxQueueLenBroadcastOnSync 500).
    max_queue_len_broadcast_on_sync: int = 500
    #: Rebroadcast newly learned attachment records through the gossip layer (libnetwork does).
    rebroadcast_attachments: bool = True

    # -- anti-entropy --
    #: Periodic bulk sync per joined network (memberlist PushPullInterval 30 s, libnetwork bulkSyncTables).
    bulk_sync_interval: float = 30.0
    #: A bulk sync not answered in this long failed (libnetwork bulk sync ack timeout 30 s).
    bulk_sync_timeout: float = 30.0
    #: Peers tried per network per round: the first, then fallbacks on failure (libnetwork 2).
    bulk_sync_attempts: int = 2
    #: Peers synchronised on network join; 0 = all known peers (libnetwork ``bulkSync(all=true)``).
    join_sync_max_peers: int = 0
    #: The join sync goes to this many peers first and to the rest once one has answered, so the rest
    #: usually find the joiner's digest equal to theirs and answer with no entries (one full copy of
    #: the table travels instead of one per peer).
    join_sync_first_wave: int = 2
    #: On a node's return after failure each peer syncs with it with probability
    #: min(1, return_sync_fanout / live peers), so about this many peers do it at once.
    return_sync_fanout: int = 3
    #: Attachment-list exchange with one random node (NetworkDB's own push-pull; memberlist
    #: PushPullInterval, scaled above 32 nodes).
    state_sync_interval: float = 30.0
    #: The first nodes seen alive after start get an immediate attachment-list exchange.
    bootstrap_state_syncs: int = 3
    #: One bulk-sync or state-sync message carries at most this many bytes; larger ones are split.
    max_message_bytes: int = 4 * 1024 * 1024

    # -- reaping (libnetwork networkdb.go / cluster.go) --
    #: Tombstones live this long (libnetwork reapEntryInterval 30 min).
    reap_entry_interval: float = 30 * 60.0
    #: Leave records of network attachments live this long, so entries go first
    #: (libnetwork reapNetworkInterval = reapEntryInterval + 5 * reapPeriod).
    reap_network_interval: float = 30 * 60.0 + 25.0
    #: A node that left or was reaped is remembered this long, so stale copies of its entries are refused
    #: (libnetwork nodeReapInterval 24 h).
    node_forget_interval: float = 24 * 3600.0

    # -- direct requests --
    #: A request without a response in this long yields ``RequestTimedOut`` (IPAM: 1 s per try).
    request_timeout: float = 1.0

    # -- clock --
    #: The Lamport high-water mark is reserved in blocks this large, so the shell persists rarely.
    high_water_block: int = 1024

    # -- size limits --
    max_table_bytes: int = 128
    max_network_bytes: int = 128
    max_key_bytes: int = 512
    max_node_name_bytes: int = 128
    max_value_bytes: int = 64 * 1024
    #: Live entries per (network, table); local writes beyond it fail, remote ones are dropped (counted).
    max_table_entries: int = 100_000
    max_request_bytes: int = 64 * 1024

    # -- global tables --
    #: Join the reserved global network ``""`` at construction.
    join_global: bool = True

    def __post_init__(self) -> None:
        positive = (
            "gossip_interval",
            "bulk_sync_interval",
            "bulk_sync_timeout",
            "state_sync_interval",
            "reap_entry_interval",
            "reap_network_interval",
            "node_forget_interval",
            "request_timeout",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.reap_network_interval <= self.reap_entry_interval:
            raise ConfigError(
                "reap_network_interval must exceed reap_entry_interval so tombstones are reaped before "
                f"leave records (got {self.reap_network_interval} <= {self.reap_entry_interval})"
            )
        at_least_one = (
            "gossip_nodes",
            "gossip_packets",
            "retransmit_mult",
            "relay_retransmit_mult",
            "max_gossip_packets",
            "max_queue_len",
            "bulk_sync_attempts",
            "high_water_block",
            "max_table_entries",
            "join_sync_first_wave",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("join_sync_max_peers", "return_sync_fanout", "bootstrap_state_syncs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_gossip_packets < self.gossip_packets:
            raise ConfigError("max_gossip_packets must be >= gossip_packets")
        if not 256 <= self.packet_budget_bytes <= 65000:
            raise ConfigError("packet_budget_bytes must be 256..65000")
        if self.max_queue_len_broadcast_on_sync > self.max_queue_len:
            raise ConfigError("max_queue_len_broadcast_on_sync must not exceed max_queue_len")
        if self.max_message_bytes < 64 * 1024 or self.max_message_bytes < 2 * self.max_value_bytes:
            raise ConfigError("max_message_bytes must be >= 64 KiB and >= 2 * max_value_bytes")
        for name in ("max_table_bytes", "max_network_bytes", "max_key_bytes", "max_node_name_bytes"):
            if not 1 <= getattr(self, name) <= 4096:
                raise ConfigError(f"{name} must be 1..4096")
        if self.max_value_bytes < 0 or self.max_request_bytes < 0:
            raise ConfigError("max_value_bytes and max_request_bytes must be >= 0")

    def with_(self, **changes: object) -> NetworkDBConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def lan() -> NetworkDBConfig:
    """libnetwork's numbers: one datacenter."""
    return NetworkDBConfig()


def wan() -> NetworkDBConfig:
    """Longer periods for high latency and loss (memberlist DefaultWANConfig's ratios)."""
    return NetworkDBConfig(
        gossip_interval=0.5,
        gossip_nodes=4,
        bulk_sync_interval=60.0,
        bulk_sync_timeout=60.0,
        state_sync_interval=60.0,
        request_timeout=3.0,
    )


def local() -> NetworkDBConfig:
    """Loopback clusters (memberlist DefaultLocalConfig's ratios). Loopback's MTU is 64 KiB, so table
    gossip datagrams may be larger than a LAN frame: 8 KiB carry ~150 small entries, and a busy node
    sends a sixth of the datagrams it would at 1300 bytes (per-datagram work dominates an agent's CPU
    at high write rates)."""
    return NetworkDBConfig(
        gossip_interval=0.1,
        packet_budget_bytes=8192,
        bulk_sync_interval=15.0,
        bulk_sync_timeout=10.0,
        state_sync_interval=15.0,
        request_timeout=0.5,
    )


def fast() -> NetworkDBConfig:
    """Short periods for tests and rule machines (reaping still after every other period)."""
    return NetworkDBConfig(
        gossip_interval=0.1,
        bulk_sync_interval=2.0,
        bulk_sync_timeout=1.0,
        state_sync_interval=2.0,
        reap_entry_interval=300.0,
        reap_network_interval=310.0,
        node_forget_interval=600.0,
        request_timeout=0.5,
    )


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times a table event is gossiped in a network of ``n`` live nodes (self included)."""
    return retransmit_mult * math.ceil(math.log10(max(1, n) + 1))


def state_sync_period(interval: float, n: int) -> float:
    """The attachment-exchange period for ``n`` known nodes: memberlist's push-pull scaling."""
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - 5) + 1)
