"""``Swim``: the sans-IO SWIM + Lifeguard core, wire-compatible with memberlist 0.2.2 / serf 0.9.4.

Theory of operation
-------------------
``Swim`` is a facade over the sub-machines; it owns no clock, socket or global randomness.

* **Inputs** are method calls with a keyword-only ``now`` (monotonic seconds): ``join``, ``leave``,
  ``set_meta``, ``send_user``/``send_user_to``, ``receive_datagram``, ``receive_stream`` (an inbound
  TCP exchange, answered by the return value), ``receive_stream_reply``/``stream_failed`` (the fate
  of a ``StreamRequest`` we asked for) and ``handle_timer``.
* **Outputs** are drained: ``datagrams_to_send``, ``streams_to_open``, ``next_event`` and
  ``next_deadline`` (the driver re-arms one timer). ``meshnet.core.drive`` does the draining.
* **Sub-machines**: ``Membership`` (member table and merge rules, suspicion deadlines, reaping),
  ``Prober`` (probe rounds, indirect probes, relays), two ``BroadcastQueue`` s (memberlist's own
  messages first, then user/serf messages framed ``08|payload`` in the leftover space),
  ``Awareness`` (Lifeguard health), ``AntiEntropy`` (every push-pull: joins, periodic syncs,
  reconnect, rejoin, unknown-sender and post-join syncs) and ``SerfState`` (serf's Lamport clocks,
  intents, push-pull user state). All deadlines live in one ``DeadlineHeap`` keyed by strings (periodic tasks) or
  tuples (``("suspect", name)``, ``("reap", name)``), so the heap's bookkeeping stays bounded by
  the member names, not by time.
* **Wire**: every datagram and stream goes through ``packet``. Piggybacked traffic (ping, ack,
  indirect ping, nack) is never CRC'd (memberlist's quirk); gossip and the buddy probe are CRC'd for
  targets with PMax >= 5; user messages to an address are sent alone, uncompressed by CRC.
* **Periodic tasks**: probe (every ``probe_interval * (score + 1)``), gossip (every
  ``gossip_interval``, only armed while something is queued, phase-aligned), and ``AntiEntropy``'s
  push-pulls (scaled above 32 nodes), serf reconnect to one failed member, libnetwork's re-join of
  the seeds when none of them is a live member. Every datagram's sender is reported to
  ``AntiEntropy`` (unknown-sender sync).
* **Leave**: (serf) leave intent, wait for it to drain, then ``dead{self, From: self}``, wait for it
  to drain; the intent may take half of ``leave_timeout``, the whole leave at most all of it, and
  it completes at once when no other member is alive (checked whenever the member table changed).
  Probing and push-pulls stop at ``leave()``; ``LeaveCompleted`` comes out in the same drain as the
  last leave datagrams, after which the core is inert (inputs are dropped, no deadline).
* **Errors**: remote garbage is counted in ``stats()`` and reported as ``MessageRejected``; it never
  raises. Local misuse raises ``LocalProtocolError``.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshnet.core.clock import DeadlineHeap
from meshnet.core.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from meshnet.gossip import packet
from meshnet.gossip.antientropy import AntiEntropy
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.broadcast_queue import Broadcast, BroadcastQueue
from meshnet.gossip.codec import MAX_COMPOUND_PARTS, encode_message
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import (
    LeaveCompleted,
    Member,
    MemberEvent,
    MessageRejected,
    UserMessageReceived,
)
from meshnet.gossip.membership import DEAD, LEFT, Membership, NodeState, ip_text
from meshnet.gossip.messages import (
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPingReq,
    Message,
    Nack,
    Ping,
    PushPull,
    Suspect,
    UserMsg,
)
from meshnet.gossip.probe import Prober
from meshnet.gossip.serf import MAX_META_BYTES, JoinIntent, LeaveIntent, SerfState, decode_intent

if TYPE_CHECKING:
    from meshnet.gossip.keyring import Keyring

__all__ = ["Swim", "StreamRequest", "Addr"]

Addr = tuple[str, int]

#: Per-part overhead in a compound (2-byte length) and the compound header's own overhead.
_COMPOUND_OVERHEAD = 2
#: AES-GCM encryption version 1: version byte + 12-byte nonce + 16-byte tag.
_ENCRYPT_OVERHEAD = 29
#: User broadcasts kept at most (serf's MaxQueueDepth); older, most-sent ones are dropped first.
_MAX_USER_QUEUE = 4096


@dataclass(frozen=True)
class StreamRequest:
    """A TCP exchange the driver should perform for the core."""

    stream_id: int
    addr: Addr
    data: bytes  # complete request, already framed (compressed/encrypted)
    expect_reply: bool  # push-pull and TCP ping: read one frame back; user message: no
    timeout: float  # config.tcp_timeout (or the probe deadline for TCP pings)


def _ip_bytes(host: str) -> bytes:
    try:
        return ipaddress.ip_address(host).packed
    except ValueError as exc:
        raise LocalProtocolError(f"address {host!r} is not an IP address; resolve names before Swim") from exc


class Swim:
    """The gossip core of one node. See the module docstring and docs/gossip-core.md."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        name: str,
        addr: Addr,
        meta: bytes = b"",
        keyring: Keyring | None = None,
        rng: random.Random,
        now: float,
        serf_compat: bool = True,
    ) -> None:
        if not name:
            raise LocalProtocolError("a node needs a non-empty name")
        if len(meta) > MAX_META_BYTES:
            raise LocalProtocolError(f"meta is {len(meta)} bytes; memberlist allows at most {MAX_META_BYTES}")
        self.config = config
        self.name = name
        self.addr: Addr = (addr[0], int(addr[1]))
        self._addr_bytes = _ip_bytes(addr[0])
        self.rng = rng
        self.serf_compat = serf_compat
        self._keyring = keyring
        self._out_keyring = keyring if keyring is not None and config.gossip_verify_outgoing else None
        self._enc_overhead = _ENCRYPT_OVERHEAD if self._out_keyring is not None else 0
        self._now = now

        self._heap = DeadlineHeap()
        self._events: deque[MemberEvent] = deque()
        self._stats: Counter[str] = Counter()
        self._outbox: list[tuple[Addr, bytes]] = []
        self._streams: list[StreamRequest] = []
        self._next_stream_id = 0

        self._awareness = Awareness(config.awareness_max_multiplier)
        self._queue = BroadcastQueue(config.retransmit_mult)
        self._user_queue = BroadcastQueue(config.retransmit_mult)
        vsn = bytes([1, 5, config.protocol_version, 2, 5, 5])
        self._local = NodeState(name, self._addr_bytes, self.addr[1], bytes(meta), 1, vsn, now)
        self._members = Membership(
            config,
            local=self._local,
            rng=rng,
            queue=self._queue,
            awareness=self._awareness,
            heap=self._heap,
            events=self._events,
            stats=self._stats,
            now=now,
        )
        self._prober = Prober(
            config,
            membership=self._members,
            awareness=self._awareness,
            heap=self._heap,
            stats=self._stats,
            source_addr=self._addr_bytes,
            source_port=self.addr[1],
            send_msg=self._send_msg,
            send_raw=self._send_raw,
            open_tcp_ping=self._open_tcp_ping,
        )
        self._serf = SerfState(name) if serf_compat else None

        self._leave_phase = 0  # 0 not leaving, 1 serf intent draining, 2 dead draining, 3 left
        self._leave_item: Broadcast | None = None
        self._leave_drained = True
        self._leave_deadline = 0.0
        self._leave_epoch = -1  # the member table's epoch when "anyone else alive?" was last asked
        self._urgent_at = -1e18  # when a death was last gossiped at once

        # Periodic tasks start at a random offset within their period (memberlist's stagger).
        self._heap.set("probe", now + rng.random() * config.probe_interval)
        self._gossip_phase = now + rng.random() * config.gossip_interval
        self._anti = AntiEntropy(
            config,
            addr=self.addr,
            membership=self._members,
            serf=self._serf,
            rng=rng,
            heap=self._heap,
            events=self._events,
            stats=self._stats,
            open_stream=self._open_stream_framed,
            frame_stream=self._frame_stream,
            cache_framed=self._out_keyring is None,
            queue_join_intent=self._queue_join_intent,
            now=now,
        )
        self._after(now)

    # ============================================================================================
    # inputs
    # ============================================================================================

    def join(self, seeds: Sequence[Addr], *, now: float) -> None:
        """Push-pull (Join=True) with each seed; ``JoinCompleted``/``JoinFailed`` per seed follow."""
        self._now = now
        self._check_usable("join")
        self._anti.join(seeds, serf_intent=self.serf_compat, now=now)
        self._after(now)

    def leave(self, *, now: float) -> None:
        """Leave gracefully: serf leave intent (with serf_compat), then ``dead{self, From: self}``.

        ``LeaveCompleted`` follows once the broadcasts drained, at once when no other member is
        alive (any more), and at the latest ``leave_timeout`` after this call: the intent gets at
        most half of it, the dead the rest. Calling it again while leaving is a no-op.
        """
        self._now = now
        if self._leave_phase:
            return
        self._prober.stop()
        self._anti.stop()
        self._leave_deadline = now + self.config.leave_timeout
        if self._serf is not None and self._members.any_alive_other():
            self._leave_phase = 1
            self._leave_epoch = self._members.epoch[0]
            self._leave_item = self._user_queue.queue(b"\x08" + self._serf.new_leave_intent())
            self._heap.set("leave", now + self.config.leave_timeout / 2)
        else:
            self._leave_dead(now)
        self._after(now)

    def set_meta(self, meta: bytes, *, now: float) -> None:
        """New node meta (serf tags): next incarnation, alive broadcast, ``MemberUpdated`` for us."""
        self._now = now
        self._check_usable("set_meta")
        if len(meta) > MAX_META_BYTES:
            raise LocalProtocolError(f"meta is {len(meta)} bytes; memberlist allows at most {MAX_META_BYTES}")
        self._members.set_local_meta(bytes(meta), now=now)
        self._after(now)

    def drop_membership_broadcasts(self) -> int:
        """Forget every queued membership rumour (``alive``, ``suspect``, ``dead``) unsent; user and
        serf broadcasts are kept. Returns how many were dropped.

        For simulators that install a converged state as if the cluster had been running for a
        while (the merge's rumours would long have run out of retransmits there); a real node has
        no use for it. Not while leaving (the leave's own broadcast is in this queue)."""
        self._check_usable("drop_membership_broadcasts")
        dropped = len(self._queue)
        self._queue.clear()
        self._stats["membership_broadcasts_dropped"] += dropped
        return dropped

    def send_user(self, payload: bytes, *, now: float) -> None:
        """Gossip ``payload`` to the cluster as a user broadcast (``08|payload``, piggybacked)."""
        self._now = now
        self._check_usable("send_user")
        limit = self.config.udp_buffer_size - 2 * _COMPOUND_OVERHEAD - self._enc_overhead - 1
        if len(payload) > limit:
            raise LocalProtocolError(
                f"a user broadcast is at most {limit} bytes here, got {len(payload)}; use send_user_to(reliable=True)"
            )
        self._user_queue.queue(b"\x08" + bytes(payload))
        self._user_queue.prune(_MAX_USER_QUEUE)
        self._after(now)

    def send_user_to(
        self,
        addr: Addr,
        payload: bytes,
        *,
        reliable: bool = False,
        compress: bool | None = None,
        now: float,
    ) -> None:
        """Send ``payload`` to one address: a UDP user message, or with ``reliable`` a TCP one.

        ``compress=False`` frames this one message without LZW even when ``enable_compression`` is on
        (memberlist compresses per message, and receivers accept both); ``None`` follows the config.
        NetworkDB's table gossip uses it: short msgpack entries gain little from pure-Python LZW, which
        costs about a millisecond per datagram each way."""
        self._now = now
        self._check_usable("send_user_to")
        addr = (addr[0], int(addr[1]))
        if reliable:
            self._open_stream(
                addr,
                packet.encode_stream_user_msg(bytes(payload)),
                False,
                self.config.tcp_timeout,
                compress=compress,
            )
        else:
            self._send_raw(addr, [b"\x08" + bytes(payload)], False, compress=compress)
        self._after(now)

    def receive_datagram(self, src: Addr, data: bytes, *, now: float) -> None:
        """One UDP datagram from ``src``. Never raises for remote garbage."""
        self._now = now
        if self._leave_phase == 3:
            self._stats["dropped_after_leave"] += 1
            return
        self._stats["datagrams_received"] += 1
        try:
            msgs = packet.decode_datagram_parts(
                data, keyring=self._keyring, verify_incoming=self.config.gossip_verify_incoming
            )
        except RemoteProtocolError as exc:
            self._reject(src, exc)
            return
        alive = self._members.alive
        named: Ping | IndirectPingReq | None = None  # the first part that names its sender
        for msg, raw in msgs:
            try:
                t = type(msg)
                if t is Alive:  # most parts: straight to the member table
                    alive(msg, now=now, raw=raw)  # type: ignore[arg-type]
                    continue
                if (t is Ping or t is IndirectPingReq) and named is None and msg.source_node:  # type: ignore[union-attr]
                    named = msg  # type: ignore[assignment]
                self._handle_packet_message(src, msg, now, raw)
            except RemoteProtocolError as exc:
                self._reject(src, exc)
        self._saw_sender(src, named, now)  # after: a sender introducing itself is known by now
        self._after(now)

    def receive_stream(self, src: Addr, data: bytes, *, now: float) -> bytes | None:
        """An inbound TCP exchange (one complete frame); returns the reply to write, or None."""
        self._now = now
        if self._leave_phase == 3:
            self._stats["dropped_after_leave"] += 1
            return None
        self._stats["streams_received"] += 1
        try:
            msg = packet.decode_stream(
                data, keyring=self._keyring, verify_incoming=self.config.gossip_verify_incoming
            )
        except RemoteProtocolError as exc:
            self._reject(src, exc)
            return self._frame_stream(encode_message(ErrResp(error=str(exc))))
        reply: bytes | None = None
        try:
            if isinstance(msg, Ping):
                if not msg.node or msg.node == self.name:
                    self._stats["tcp_pings_answered"] += 1
                    reply = self._frame_stream(encode_message(Ack(seq_no=msg.seq_no, payload=None)))
                else:
                    self._stats["pings_for_other_node"] += 1
            elif isinstance(msg, PushPull):
                reply = self._anti.local_state(msg.join)  # answer first, then merge (as memberlist)
                err = self._anti.merge(msg, now)
                if err is not None:
                    raise RemoteProtocolError(f"push-pull merge failed: {err}")
            elif isinstance(msg, UserMsg):
                self._on_user(src, msg.payload)
            else:
                raise RemoteProtocolError(f"unexpected {type(msg).__name__} on an inbound stream")
        except RemoteProtocolError as exc:
            self._reject(src, exc)
        self._after(now)
        return reply

    def receive_stream_reply(self, stream_id: int, data: bytes, *, now: float) -> None:
        """The reply frame of one of our ``StreamRequest`` s."""
        self._now = now
        if self._leave_phase == 3:
            return
        if self._prober.owns_stream(stream_id):
            ack: Ack | None = None
            try:
                msg = packet.decode_stream(
                    data, keyring=self._keyring, verify_incoming=self.config.gossip_verify_incoming
                )
                if not isinstance(msg, Ack):
                    raise RemoteProtocolError(f"TCP ping answered with {type(msg).__name__}")
                ack = msg
            except RemoteProtocolError as exc:
                self._reject(self._prober.tcp_streams[stream_id].target.address, exc)
            self._prober.on_tcp_ack(stream_id, ack)
            self._after(now)
            return
        ctx = self._anti.requests.pop(stream_id, None)
        if ctx is None:
            self._stats["stream_replies_unexpected"] += 1
            return
        kind, addr = ctx
        try:
            msg = packet.decode_stream(
                data, keyring=self._keyring, verify_incoming=self.config.gossip_verify_incoming
            )
            if isinstance(msg, ErrResp):
                raise RemoteProtocolError(f"remote error: {msg.error}")
            if not isinstance(msg, PushPull):
                raise RemoteProtocolError(f"push-pull answered with {type(msg).__name__}")
            err = self._anti.merge(msg, now)
            if err is not None:
                raise RemoteProtocolError(err)
        except RemoteProtocolError as exc:
            self._reject(addr, exc)
            self._anti.failed(kind, addr, str(exc))
        else:
            self._anti.done(kind, addr, len(msg.states), now)
        self._after(now)

    def stream_failed(self, stream_id: int, *, now: float) -> None:
        """A ``StreamRequest`` could not connect, timed out or broke before its reply."""
        self._now = now
        if self._leave_phase == 3:
            return
        if self._prober.owns_stream(stream_id):
            self._prober.on_tcp_ack(stream_id, None)
            self._stats["tcp_pings_failed"] += 1
        else:
            ctx = self._anti.requests.pop(stream_id, None)
            if ctx is None:
                self._stats["streams_failed_untracked"] += 1
            else:
                self._anti.failed(ctx[0], ctx[1], "stream failed")
        self._after(now)

    def handle_timer(self, *, now: float) -> None:
        """Run every task whose deadline is <= ``now``."""
        self._now = now
        if self._leave_phase == 3:
            return
        while due := self._heap.pop_due(now):
            for key in due:
                self._fire(key, now)
                if self._leave_phase == 3:
                    return
        self._after(now)

    def stream_frame_length(self, buf: bytes) -> int | None:
        """``packet.stream_frame_length`` with our keyring (may raise ``DecodeError``)."""
        return packet.stream_frame_length(buf, keyring=self._keyring)

    # ============================================================================================
    # outputs and reads
    # ============================================================================================

    def datagrams_to_send(self) -> list[tuple[Addr, bytes]]:
        """Datagrams to send from the node's bound UDP socket, in order."""
        out, self._outbox = self._outbox, []
        return out

    def streams_to_open(self) -> list[StreamRequest]:
        """TCP exchanges to perform, in order."""
        out, self._streams = self._streams, []
        return out

    def next_event(self) -> MemberEvent | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next run (None after the leave completed)."""
        if self._leave_phase == 3:
            return None
        return self._heap.next_deadline()

    def members(self) -> list[Member]:
        """Every known member including ourselves (failed/left until reaped), sorted by name."""
        return self._members.members()

    def stats(self) -> dict[str, int]:
        """Counters (decode errors, probes, refutes, ...), sorted by name."""
        return {k: self._stats[k] for k in sorted(self._stats)}

    @property
    def health_score(self) -> int:
        """Lifeguard local health score (0 = healthy)."""
        return self._awareness.score

    @property
    def is_left(self) -> bool:
        """True once ``leave()`` completed."""
        return self._leave_phase == 3

    @property
    def incarnation(self) -> int:
        """Our own incarnation number."""
        return self._local.incarnation

    # ============================================================================================
    # internals: sending
    # ============================================================================================

    def _send_raw(self, addr: Addr, parts: list[bytes], crc: bool, *, compress: bool | None = None) -> None:
        data = packet.encode_datagram(
            parts,
            crc=crc,
            compress=self.config.enable_compression and compress is not False,
            keyring=self._out_keyring,
            rng=self.rng,
            udp_buffer_size=self.config.udp_buffer_size,
        )
        self._stats["datagrams_sent"] += 1
        self._outbox.append((addr, data))

    def _send_msg(self, addr: Addr, msg: bytes) -> None:
        """memberlist's encodeAndSendMsg: one message plus piggybacked broadcasts, no CRC."""
        avail = self.config.udp_buffer_size - len(msg) - _COMPOUND_OVERHEAD - self._enc_overhead
        extra = self._get_broadcasts(_COMPOUND_OVERHEAD, avail, MAX_COMPOUND_PARTS - 1)
        self._send_raw(addr, [msg, *extra], False)

    def _get_broadcasts(self, overhead: int, limit: int, max_parts: int = MAX_COMPOUND_PARTS) -> list[bytes]:
        n = self._members.num_nodes
        msgs = self._queue.get_broadcasts(overhead, limit, n) if len(self._queue) else []
        if len(self._user_queue):
            avail = limit - sum(map(len, msgs)) - overhead * len(msgs)
            if avail > overhead + 1:
                msgs += self._user_queue.get_broadcasts(overhead, avail, n)
        return msgs[:max_parts]

    def _frame_stream(self, msg: bytes, *, compress: bool | None = None) -> bytes:
        return packet.encode_stream(
            msg,
            compress=self.config.enable_compression and compress is not False,
            keyring=self._out_keyring,
            rng=self.rng,
        )

    def _open_stream(
        self, addr: Addr, data: bytes, expect_reply: bool, timeout: float, *, compress: bool | None = None
    ) -> int:
        self._next_stream_id += 1
        sid = self._next_stream_id
        self._streams.append(
            StreamRequest(sid, addr, self._frame_stream(data, compress=compress), expect_reply, timeout)
        )
        self._stats["streams_opened"] += 1
        return sid

    def _open_tcp_ping(self, addr: Addr, ping: bytes, timeout: float) -> int:
        return self._open_stream(addr, ping, True, timeout)

    def _gossip(self, now: float) -> None:
        gttd = self.config.gossip_to_the_dead_time
        local = self._local
        targets = self._members.random_nodes(
            self.config.gossip_nodes,
            lambda n: n is local or n.state == LEFT or (n.state == DEAD and now - n.state_changed_at > gttd),
        )
        avail = self.config.udp_buffer_size - _COMPOUND_OVERHEAD - self._enc_overhead
        for node in targets:
            msgs = self._get_broadcasts(_COMPOUND_OVERHEAD, avail)
            if not msgs:
                break
            self._stats["gossip_sent"] += 1
            self._send_raw(node.address, msgs, node.pmax >= 5)

    # ============================================================================================
    # internals: receiving
    # ============================================================================================

    def _handle_packet_message(self, src: Addr, msg: Message, now: float, raw: bytes | None = None) -> None:
        t = type(msg)
        if t is Alive:
            self._members.alive(msg, now=now, raw=raw)  # type: ignore[arg-type]
        elif t is Ping:
            assert isinstance(msg, Ping)
            if msg.node and msg.node != self.name:
                self._stats["pings_for_other_node"] += 1
                return
            if msg.source_addr and msg.source_port:
                to = (ip_text(msg.source_addr), msg.source_port)
            else:
                to = src
            self._stats["pings_answered"] += 1
            self._send_msg(to, encode_message(Ack(seq_no=msg.seq_no, payload=None)))
        elif t is Ack:
            self._prober.on_ack(msg, now=now)  # type: ignore[arg-type]
        elif t is Suspect:
            self._members.suspect(msg, now=now, raw=raw)  # type: ignore[arg-type]
        elif t is Dead:
            self._members.dead(msg, now=now, raw=raw)  # type: ignore[arg-type]
        elif t is IndirectPingReq:
            self._prober.on_indirect_ping(msg, src, now=now)  # type: ignore[arg-type]
        elif t is Nack:
            self._prober.on_nack(msg, now=now)  # type: ignore[arg-type]
        elif t is UserMsg:
            self._on_user(src, msg.payload)  # type: ignore[union-attr]
        else:
            raise RemoteProtocolError(f"unexpected {t.__name__} in a datagram")

    def _saw_sender(self, src: Addr, named: Ping | IndirectPingReq | None, now: float) -> None:
        """Tell anti-entropy who sent a datagram: the ``SourceNode`` and ``SourceAddr:SourcePort`` of
        the first ping or indirect ping in it that has them, else the UDP source."""
        if named is None:
            self._anti.saw_sender(src, None, now=now)
            return
        addr = src
        if len(named.source_addr) in (4, 16) and named.source_port:
            addr = (ip_text(named.source_addr), named.source_port)
        self._anti.saw_sender(addr, named.source_node, now=now)

    def _on_user(self, src: Addr, payload: bytes) -> None:
        self._stats["user_messages_received"] += 1
        self._events.append(UserMessageReceived(src, payload))
        serf = self._serf
        if serf is None or not payload or payload[0] > 4:
            return
        try:
            intent = decode_intent(payload)
            if intent is None:
                serf.witness_message(payload)
                return
        except DecodeError:
            self._stats["serf_messages_undecodable"] += 1
            return
        if isinstance(intent, LeaveIntent):
            # Leave intents are re-gossiped once, as serf does: they decide left versus failed.
            if serf.leave_intent(intent):
                self._user_queue.queue(b"\x08" + payload)
            if intent.node == self.name and self._leave_phase == 0:
                # serf refutes a stale leave intent about itself with a fresh join intent
                self._user_queue.queue(b"\x08" + serf.new_join_intent())
                self._stats["serf_leave_refuted"] += 1
        else:
            # Join intents only move clocks; serf agents re-gossip them themselves, and doing it
            # here too would double the gossip load of every join storm (N^2 log N messages).
            assert isinstance(intent, JoinIntent)
            serf.join_intent(intent)

    def _reject(self, src: Addr, exc: Exception) -> None:
        kind = "decode_errors" if isinstance(exc, DecodeError) else "protocol_errors"
        self._stats[kind] += 1
        self._events.append(MessageRejected(src, str(exc)))

    # ============================================================================================
    # internals: push-pull
    # ============================================================================================

    def _open_stream_framed(self, addr: Addr, framed: bytes) -> int:
        self._next_stream_id += 1
        sid = self._next_stream_id
        self._streams.append(StreamRequest(sid, addr, framed, True, self.config.tcp_timeout))
        self._stats["streams_opened"] += 1
        return sid

    def _queue_join_intent(self) -> None:
        assert self._serf is not None
        self._user_queue.queue(b"\x08" + self._serf.new_join_intent())

    # ============================================================================================
    # internals: timers, leave
    # ============================================================================================

    def _fire(self, key: object, now: float) -> None:
        if isinstance(key, tuple):
            kind, arg = key
            if kind == "suspect":
                self._members.suspicion_expired(arg, now=now)
            elif kind == "reap" and self._members.reap(arg) and self._serf is not None:
                self._serf.forget(arg)
            else:
                self._anti.fire(key, now)
            return
        if self._anti.fire(key, now):
            return
        if key == "probe":
            if self._leave_phase == 0:
                self._prober.tick(now=now)
        elif key == "probe_timeout":
            self._prober.direct_timeout(now=now)
        elif key == "probe_end":
            self._prober.round_end(now=now)
        elif key == "relay":
            self._prober.relay_timeout(now=now)
        elif key == "gossip":
            self._gossip(now)
        elif key == "leave":
            self._leave_drained = False
            if self._leave_phase == 1:
                self._leave_dead(now)
            elif self._leave_phase == 2:
                self._leave_done()

    def _leave_dead(self, now: float) -> None:
        item = self._members.leave_local(now=now)
        if self._members.any_alive_other():
            self._leave_phase = 2
            self._leave_epoch = self._members.epoch[0]
            self._leave_item = item
            self._heap.set("leave", max(now, self._leave_deadline))
        else:
            self._leave_done()

    def _leave_done(self) -> None:
        self._leave_phase = 3
        self._leave_item = None
        self._events.append(LeaveCompleted(self._leave_drained))

    def _check_usable(self, what: str) -> None:
        if self._leave_phase:
            raise LocalProtocolError(
                f"{what}() after leave(): this node has left; create a new Swim to rejoin"
            )

    def _after(self, now: float) -> None:
        """Bookkeeping after every input: leave progress, arming the gossip tick."""
        item = self._leave_item
        if item is not None:
            members = self._members
            if not item.done and members.epoch[0] != self._leave_epoch:
                # Nobody left to tell (e.g. the other member left too): nothing more to drain.
                self._leave_epoch = members.epoch[0]
                if not members.any_alive_other():
                    self._stats["leave_nobody_alive"] += 1
                    if self._leave_phase == 1:
                        self._leave_dead(now)  # marks us left; completes, since nobody is alive
                    else:
                        self._leave_done()
            elif item.done:
                if self._leave_phase == 1:
                    self._leave_dead(now)
                elif self._leave_phase == 2:
                    self._leave_done()
        if self._leave_phase == 3:
            return
        if self._members.urgent:
            # A member was just declared dead or left: gossip that now instead of at the next tick,
            # so every hop of the rumour costs a network latency, not up to a gossip interval (the
            # spread between the first and the last observer of a failure). Transmits still count,
            # so this only moves rounds earlier; at most one such round per quarter interval.
            self._members.urgent = False
            if now - self._urgent_at >= self.config.gossip_interval / 4:
                self._urgent_at = now
                self._stats["gossip_urgent"] += 1
                self._gossip(now)
        if (len(self._queue) or len(self._user_queue)) and "gossip" not in self._heap:
            interval = self.config.gossip_interval
            k = int((now - self._gossip_phase) // interval) + 1
            at = self._gossip_phase + k * interval
            if at <= now:
                at += interval
            self._heap.set("gossip", at)
