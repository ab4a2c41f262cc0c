"""Gossip configuration and memberlist's presets (memberlist-wire.md section 11).

Field names map one to one to memberlist's Config and the SWIM/Lifeguard papers' parameters.
All durations are float seconds. The scaling formulas live in ``meshnet.gossip.util`` and are
quoted on each field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from meshnet.core.errors import ConfigError

__all__ = ["GossipConfig", "lan", "wan", "local"]


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Tunables of the SWIM + Lifeguard core. Use ``lan()``, ``wan()`` or ``local()``."""

    #: Timeout of one TCP exchange (push-pull, TCP ping, TCP user message).
    tcp_timeout: float = 10.0
    #: Peers asked to probe a target indirectly after a direct probe fails (SWIM's k).
    indirect_checks: int = 3
    #: Each broadcast is sent retransmit_mult * ceil(log10(N + 1)) times.
    retransmit_mult: int = 4
    #: Suspicion min = suspicion_mult * max(1, log10(max(1, N))) * probe_interval.
    suspicion_mult: int = 4
    #: Suspicion max = suspicion_max_timeout_mult * min (Lifeguard: start at max, shrink with confirmations).
    suspicion_max_timeout_mult: int = 6
    #: Full-state anti-entropy period; above 32 nodes scaled by ceil(log2(N) - 5) + 1.
    push_pull_interval: float = 30.0
    #: Protocol period: one member probed per interval (scaled by awareness score + 1).
    probe_interval: float = 1.0
    #: Wait for a direct ack (scaled by awareness score + 1).
    probe_timeout: float = 0.5
    #: Lifeguard local health: probe interval/timeout multiplied by (score + 1), score < this.
    awareness_max_multiplier: int = 8
    #: How often queued broadcasts are gossiped to gossip_nodes random members.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    #: Dead members still receive gossip this long, so they can learn of and refute their death.
    gossip_to_the_dead_time: float = 30.0
    #: memberlist protocol version we speak (serf always uses 2; we accept 2..5 from peers).
    protocol_version: int = 2
    #: Largest UDP payload we build (piggybacking fills up to this).
    udp_buffer_size: int = 1400
    #: Compress (LZW) datagrams when smaller, and every TCP stream.
    enable_compression: bool = True
    #: With a keyring: drop unencrypted input / encrypt output.
    gossip_verify_incoming: bool = True
    gossip_verify_outgoing: bool = True
    #: Never fall back to a TCP ping when UDP probes fail.
    disable_tcp_pings: bool = False
    #: A dead node's name may be taken by another address after this long (0 = never, memberlist default).
    dead_node_reclaim_time: float = 0.0
    #: Reconnect attempts to failed members (serf ReconnectInterval; 0 disables).
    reconnect_interval: float = 30.0
    #: Failed members are forgotten after this long (serf ReconnectTimeout).
    reconnect_timeout: float = 24 * 3600.0
    #: Left members are forgotten after this long (serf TombstoneTimeout).
    tombstone_timeout: float = 24 * 3600.0
    #: This often: libnetwork's split-cluster fix (re-join every seed when none is a live member),
    #: else re-join one seed that is not in the node list at all (0 disables both).
    rejoin_interval: float = 60.0
    #: A datagram from a sender that is unknown or believed dead starts a push-pull with it this long
    #: later, if that is still so then (a join rumour that missed us; 0 disables).
    sync_unknown_delay: float = 1.0
    #: After joining, push-pull with one random member at each of these offsets (seconds).
    join_sync_offsets: tuple[float, ...] = (1.0, 2.0, 4.0)
    #: Graceful leave waits at most this long for the leave broadcast to drain (serf BroadcastTimeout).
    leave_timeout: float = 5.0
    #: Default UDP/TCP port.
    port: int = 7946

    def __post_init__(self) -> None:
        positive = {
            "tcp_timeout": self.tcp_timeout,
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "gossip_interval": self.gossip_interval,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                f"probe_timeout ({self.probe_timeout}) must be shorter than probe_interval ({self.probe_interval})"
            )
        for name in ("indirect_checks", "retransmit_mult", "suspicion_mult", "gossip_nodes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.suspicion_max_timeout_mult < 1 or self.awareness_max_multiplier < 1:
            raise ConfigError("suspicion_max_timeout_mult and awareness_max_multiplier must be >= 1")
        if not 2 <= self.protocol_version <= 5:
            raise ConfigError(f"protocol_version must be 2..5, got {self.protocol_version}")
        if not 576 <= self.udp_buffer_size <= 65507:
            raise ConfigError("udp_buffer_size must be 576..65507 bytes")

    def with_(self, **changes: object) -> GossipConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def lan() -> GossipConfig:
    """memberlist DefaultLANConfig: a single datacenter."""
    return GossipConfig()


def wan() -> GossipConfig:
    """memberlist DefaultWANConfig: higher latency, more loss."""
    return GossipConfig(
        tcp_timeout=30.0,
        suspicion_mult=6,
        push_pull_interval=60.0,
        probe_timeout=3.0,
        probe_interval=5.0,
        gossip_nodes=4,
        gossip_interval=0.5,
        gossip_to_the_dead_time=60.0,
    )


def local() -> GossipConfig:
    """memberlist DefaultLocalConfig: loopback / one host."""
    return GossipConfig(
        tcp_timeout=1.0,
        indirect_checks=1,
        retransmit_mult=2,
        suspicion_mult=3,
        push_pull_interval=15.0,
        probe_timeout=0.2,
        probe_interval=1.0,
        gossip_interval=0.1,
        gossip_to_the_dead_time=15.0,
    )
