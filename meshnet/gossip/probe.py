"""SWIM failure detection: one probe round as a small state machine, plus relaying for others.

Theory of operation (memberlist-wire.md 8.1-8.4)
------------------------------------------------
Every protocol period the facade calls ``Prober.tick``: the next member of the shuffled node list is
probed. A round moves through three phases, each ended by a deadline in the shared ``DeadlineHeap``:

``DIRECT``   ``ping{SeqNo, Node, Source*}`` was sent (to a *suspect* target as the CRC'd buddy
             compound ``[ping, suspect{inc, target, From: us}]`` so it can refute at once). Wait
             ``probe_timeout * (score + 1)`` for the ack (key ``"probe_timeout"``).
``INDIRECT`` No ack yet: ``indirectPingReq`` with the *same* SeqNo goes to ``indirect_checks`` random
             alive peers (``Nack`` asked of peers with PMax >= 4), and in parallel a TCP ping when
             the target's PMax >= 3 and TCP pings are enabled. Wait until the end of the scaled
             protocol period (key ``"probe_end"``).
``DONE``     An ack with the SeqNo (direct or relayed) at any time before the end is a success:
             health score -1. At the end without one, a TCP ack still counts as success (the network
             may be misconfigured); otherwise the health score rises by the number of missing nacks
             (or by 1 when none were expected) and the target becomes suspect (From = us).

Relaying (8.2): on ``indirectPingReq`` we ping the target with our own SeqNo. Its ack makes us ack
the requester's SeqNo to ``SourceAddr:SourcePort`` (or the UDP source); if ``Nack`` was set and no
ack came within ``probe_timeout``, we send ``nack{SeqNo}`` (key ``"relay"``, one deadline for a
FIFO of relays, since they all expire ``probe_timeout`` after they start).

SeqNos are a uint32 counter shared by probes and relays, so one ``acks`` map routes every ack.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from enum import Enum

from meshnet.core.clock import DeadlineHeap
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.codec import encode_message
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.membership import ALIVE, SUSPECT, Membership, NodeState, ip_text
from meshnet.gossip.messages import Ack, IndirectPingReq, Nack, Ping, Suspect

__all__ = ["Phase", "ProbeRound", "Relay", "Prober"]

Addr = tuple[str, int]


class Phase(Enum):
    DIRECT = "direct"
    INDIRECT = "indirect"
    DONE = "done"


class ProbeRound:
    """One probe of ``target``: its SeqNo, deadlines and what has come back so far."""

    __slots__ = (
        "target",
        "incarnation",
        "seq_no",
        "started_at",
        "timeout_at",
        "ends_at",
        "phase",
        "acked",
        "expected_nacks",
        "nacks",
        "tcp_stream",
        "tcp_ok",
    )

    def __init__(self, target: NodeState, seq_no: int, started_at: float, timeout: float, interval: float):
        self.target = target
        self.incarnation = target.incarnation
        self.seq_no = seq_no
        self.started_at = started_at
        self.timeout_at = started_at + timeout
        self.ends_at = started_at + interval
        self.phase = Phase.DIRECT
        self.acked = False
        self.expected_nacks = 0
        self.nacks = 0
        self.tcp_stream: int | None = None
        self.tcp_ok = False

    def awareness_delta(self) -> int:
        """Health score change once the round is over."""
        if self.acked or self.tcp_ok:
            return -1
        if self.expected_nacks > 0:
            return max(0, self.expected_nacks - self.nacks)
        return 1


class Relay:
    """An indirect ping we are carrying out for ``requester``."""

    __slots__ = ("requester", "seq_no", "nack")

    def __init__(self, requester: Addr, seq_no: int, nack: bool) -> None:
        self.requester = requester
        self.seq_no = seq_no
        self.nack = nack


class Prober:
    """Runs probe rounds and relays. Sends through callables supplied by the facade."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        membership: Membership,
        awareness: Awareness,
        heap: DeadlineHeap,
        stats: Counter,
        source_addr: bytes,
        source_port: int,
        send_msg: Callable[[Addr, bytes], None],
        send_raw: Callable[[Addr, list[bytes], bool], None],
        open_tcp_ping: Callable[[Addr, bytes, float], int],
    ) -> None:
        self.config = config
        self.membership = membership
        self.awareness = awareness
        self.heap = heap
        self.stats = stats
        self.name = membership.local_name
        self.source_addr = source_addr
        self.source_port = source_port
        self._send_msg = send_msg
        self._send_raw = send_raw
        self._open_tcp_ping = open_tcp_ping
        self.seq_no = 0
        self.round: ProbeRound | None = None
        self.acks: dict[int, ProbeRound | Relay] = {}
        self.tcp_streams: dict[int, ProbeRound] = {}
        #: Relays in expiry order (all expire ``probe_timeout`` after they start): (expires_at, seq).
        self.relay_expiry: deque[tuple[float, int]] = deque()

    def next_seq(self) -> int:
        """The next SeqNo (uint32, wrapping, never 0)."""
        self.seq_no = self.seq_no % 0xFFFFFFFF + 1
        return self.seq_no

    def _ping(self, seq: int, node: str) -> Ping:
        return Ping(
            seq_no=seq,
            node=node,
            source_addr=self.source_addr,
            source_port=self.source_port,
            source_node=self.name,
        )

    # -- our own probe rounds ---------------------------------------------------------------------

    def tick(self, *, now: float) -> None:
        """Start the next probe round (key ``"probe"``) and schedule the one after."""
        if self.round is not None:
            self._finish(self.round, now=now)
        target = self.membership.next_probe_target(now)
        if target is None:
            self.heap.set("probe", now + self.config.probe_interval)
            return
        scale = self.awareness.score + 1
        seq = self.next_seq()
        rnd = ProbeRound(
            target, seq, now, self.config.probe_timeout * scale, self.config.probe_interval * scale
        )
        self.round = rnd
        self.acks[seq] = rnd
        self.stats["probes"] += 1
        ping = encode_message(self._ping(seq, target.name))
        if target.state == ALIVE:
            self._send_msg(target.address, ping)
        else:  # suspect: the buddy system, so it hears of its suspicion and can refute
            sus = encode_message(
                Suspect(incarnation=target.incarnation, node=target.name, from_node=self.name)
            )
            self._send_raw(target.address, [ping, sus], target.pmax >= 5)
        # Fixed keys (one round at a time), so the heap's bookkeeping does not grow with every
        # SeqNo. Insertion order breaks ties: the round ends before the next one starts.
        self.heap.set("probe_timeout", rnd.timeout_at)
        self.heap.set("probe_end", rnd.ends_at)
        self.heap.set("probe", rnd.ends_at)

    def direct_timeout(self, *, now: float) -> None:
        """No direct ack in time: indirect pings and the TCP fallback."""
        rnd = self.round
        if rnd is None or rnd.phase is not Phase.DIRECT:
            return
        seq = rnd.seq_no
        rnd.phase = Phase.INDIRECT
        target = rnd.target
        peers = self.membership.random_nodes(
            self.config.indirect_checks,
            lambda n: n is self.membership.local or n is target or n.state != ALIVE,
        )
        for peer in peers:
            nack = peer.pmax >= 4
            rnd.expected_nacks += nack
            req = IndirectPingReq(
                seq_no=seq,
                target=target.addr,
                port=target.port,
                node=target.name,
                nack=nack,
                source_addr=self.source_addr,
                source_port=self.source_port,
                source_node=self.name,
            )
            self.stats["indirect_pings_sent"] += 1
            self._send_msg(peer.address, encode_message(req))
        if not self.config.disable_tcp_pings and target.pmax >= 3:
            data = encode_message(self._ping(seq, target.name))
            sid = self._open_tcp_ping(target.address, data, max(0.0, rnd.ends_at - now))
            rnd.tcp_stream = sid
            self.tcp_streams[sid] = rnd
            self.stats["tcp_pings_sent"] += 1

    def round_end(self, *, now: float) -> None:
        """The protocol period of the running round is over."""
        rnd = self.round
        if rnd is not None:
            self._finish(rnd, now=now)

    def _finish(self, rnd: ProbeRound, *, now: float) -> None:
        self.round = None
        rnd.phase = Phase.DONE
        self.acks.pop(rnd.seq_no, None)
        self.heap.cancel("probe_timeout")
        self.heap.cancel("probe_end")
        if rnd.tcp_stream is not None:
            self.tcp_streams.pop(rnd.tcp_stream, None)
        self.awareness.apply_delta(rnd.awareness_delta())
        if rnd.acked:
            return
        if rnd.tcp_ok:
            self.stats["probes_saved_by_tcp"] += 1
            return
        self.stats["probes_failed"] += 1
        target = rnd.target
        if target.in_list and target.state in (ALIVE, SUSPECT):
            self.membership.suspect(
                Suspect(incarnation=rnd.incarnation, node=target.name, from_node=self.name), now=now
            )

    def stop(self) -> None:
        """Abandon the current round without judging it (we are leaving)."""
        rnd = self.round
        if rnd is not None:
            self.round = None
            self.acks.pop(rnd.seq_no, None)
            self.heap.cancel("probe_timeout")
            self.heap.cancel("probe_end")
        self.heap.cancel("probe")

    # -- replies ----------------------------------------------------------------------------------

    def on_ack(self, ack: Ack, *, now: float) -> None:
        """Route an ack by SeqNo: our round succeeds, or a relay forwards it."""
        handler = self.acks.pop(ack.seq_no, None)
        if handler is None:
            self.stats["acks_unexpected"] += 1
            return
        if isinstance(handler, ProbeRound):
            handler.acked = True
            self._finish(handler, now=now)
            return
        self.stats["relayed_acks"] += 1
        self._send_msg(handler.requester, encode_message(Ack(seq_no=handler.seq_no, payload=None)))

    def on_nack(self, nack: Nack, *, now: float) -> None:
        """Count a nack for the running round."""
        rnd = self.round
        if rnd is not None and rnd.seq_no == nack.seq_no:
            rnd.nacks += 1
        else:
            self.stats["nacks_unexpected"] += 1

    def on_tcp_ack(self, stream_id: int, ack: Ack | None) -> None:
        """The TCP ping on ``stream_id`` came back (``ack`` None: it failed or was garbage)."""
        rnd = self.tcp_streams.pop(stream_id, None)
        if rnd is None or self.round is not rnd:
            return
        if ack is not None and ack.seq_no == rnd.seq_no:
            rnd.tcp_ok = True
        elif ack is not None:
            self.stats["tcp_ping_bad_seq"] += 1

    def owns_stream(self, stream_id: int) -> bool:
        return stream_id in self.tcp_streams

    # -- relaying for others ----------------------------------------------------------------------

    def on_indirect_ping(self, req: IndirectPingReq, src: Addr, *, now: float) -> None:
        """Probe ``req``'s target on the requester's behalf."""
        target = (ip_text(req.target), req.port or self.config.port)
        if req.source_addr and req.source_port:
            requester = (ip_text(req.source_addr), req.source_port)
        else:
            requester = src
        seq = self.next_seq()
        self.acks[seq] = Relay(requester, req.seq_no, req.nack)
        self.relay_expiry.append((now + self.config.probe_timeout, seq))
        if "relay" not in self.heap:
            self.heap.set("relay", self.relay_expiry[0][0])
        self.stats["indirect_pings_relayed"] += 1
        self._send_msg(target, encode_message(self._ping(seq, req.node)))

    def relay_timeout(self, *, now: float) -> None:
        """Relays whose ping got no ack in time: nack each requester that asked for one."""
        expiry = self.relay_expiry
        while expiry and expiry[0][0] <= now:
            _, seq = expiry.popleft()
            handler = self.acks.get(seq)
            if not isinstance(handler, Relay):
                continue  # acked already (or the SeqNo now belongs to something else)
            del self.acks[seq]
            if handler.nack:
                self.stats["nacks_sent"] += 1
                self._send_msg(handler.requester, encode_message(Nack(seq_no=handler.seq_no)))
        if expiry:
            self.heap.set("relay", expiry[0][0])
