"""One probe round and relaying, on a single ``Swim`` fed by hand (exact instants, exact bytes)."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from helpers import decode

from meshnet.gossip import packet
from meshnet.gossip.codec import encode_message
from meshnet.gossip.config import GossipConfig, lan
from meshnet.gossip.events import MemberSuspected
from meshnet.gossip.messages import Ack, Alive, IndirectPingReq, Nack, Ping, Suspect, UserMsg
from meshnet.gossip.swim import Swim

ME = ("10.0.0.1", 7946)
PEERS = {"a": "10.0.0.2", "b": "10.0.0.3", "c": "10.0.0.4"}
V5 = bytes([1, 5, 2, 2, 5, 5])
V4 = bytes([1, 4, 2, 2, 5, 5])
V2 = bytes([1, 2, 2, 2, 5, 5])


def ip(name: str) -> bytes:
    return bytes(int(x) for x in PEERS[name].split("."))


def dgram(*msgs) -> bytes:
    return packet.encode_datagram(
        [encode_message(m) for m in msgs], crc=False, compress=False, keyring=None, rng=random.Random(0)
    )


class Lone:
    """One core plus a log of everything it sent, with timestamps."""

    def __init__(self, config: GossipConfig | None = None, peers: dict[str, bytes] | None = None) -> None:
        self.core = Swim(config or lan(), name="me", addr=ME, rng=random.Random(3), now=0.0)
        self.now = 0.0
        self.log: list[tuple[float, tuple[str, int], list]] = []
        self.streams: list[tuple[float, object]] = []
        self.events: list = []
        peers = peers if peers is not None else {"a": V5, "b": V5, "c": V5}
        if peers:
            self.feed(("10.0.0.2", 7946), *(Alive(1, n, ip(n), 7946, b"", v) for n, v in peers.items()))

    def _collect(self) -> None:
        for addr, data in self.core.datagrams_to_send():
            self.log.append((self.now, addr, decode(data)))
        for req in self.core.streams_to_open():
            self.streams.append((self.now, req))
        while (ev := self.core.next_event()) is not None:
            self.events.append(ev)

    def feed(self, src, *msgs, at: float | None = None) -> None:
        self.run_until(self.now if at is None else at)
        self.core.receive_datagram(src, dgram(*msgs), now=self.now)
        self._collect()

    def run_until(self, t: float) -> None:
        while (d := self.core.next_deadline()) is not None and d <= t:
            self.now = max(self.now, d)
            self.core.handle_timer(now=self.now)
            self._collect()
        self.now = max(self.now, t)

    def sent(self, cls, since: float = 0.0) -> list[tuple[float, tuple[str, int], object]]:
        return [(t, a, m) for t, a, ms in self.log if t >= since for m in ms if isinstance(m, cls)]

    def first_probe(self) -> tuple[float, tuple[str, int], Ping]:
        while not self.sent(Ping):
            self.run_until(self.now + 0.05)
        return self.sent(Ping)[0]


def name_of(addr: tuple[str, int]) -> str:
    return {v: k for k, v in PEERS.items()}[addr[0]]


def test_ack_in_time_means_no_suspicion() -> None:
    w = Lone()
    t0, addr, ping = w.first_probe()
    assert ping.node == name_of(addr)
    assert (ping.source_addr, ping.source_port, ping.source_node) == (bytes([10, 0, 0, 1]), 7946, "me")
    w.feed(addr, Ack(ping.seq_no, b"\x01coordinate"), at=t0 + 0.2)  # serf's opaque payload is fine
    w.run_until(t0 + 0.999)
    assert w.sent(IndirectPingReq) == [] and w.streams == []
    assert w.sent(Suspect) == []
    assert all(m.state == "alive" for m in w.core.members())
    assert w.core.health_score == 0
    assert w.core.stats()["probes"] == 1 and "probes_failed" not in w.core.stats()


def test_no_ack_indirect_pings_same_seqno_at_probe_timeout_then_suspect() -> None:
    w = Lone()
    t0, addr, ping = w.first_probe()
    target = name_of(addr)
    w.run_until(t0 + 0.499)
    assert w.sent(IndirectPingReq) == []
    w.run_until(t0 + 0.5)
    ind = w.sent(IndirectPingReq)
    assert {t for t, _, _ in ind} == {t0 + 0.5}
    assert sorted(name_of(a) for _, a, _ in ind) == sorted(set(PEERS) - {target})  # 2 other alive peers
    for _, _, req in ind:
        assert req.seq_no == ping.seq_no and req.node == target and req.target == ip(target)
        assert req.port == 7946 and req.nack is True  # peers have PMax 5 >= 4
        assert (req.source_addr, req.source_port, req.source_node) == (bytes([10, 0, 0, 1]), 7946, "me")
    # TCP fallback in parallel, bounded by the end of the protocol period
    ((ts, req),) = w.streams
    assert ts == t0 + 0.5 and req.addr == addr and req.expect_reply and req.timeout == pytest.approx(0.5)
    tcp_ping = packet.decode_stream(req.data, keyring=None)
    assert tcp_ping == Ping(ping.seq_no, target, bytes([10, 0, 0, 1]), 7946, "me")
    assert not [e for e in w.events if isinstance(e, MemberSuspected)]
    w.run_until(t0 + 1.0)
    (sus,) = [e for e in w.events if isinstance(e, MemberSuspected)]
    assert sus.member.name == target and sus.from_node == "me"
    assert w.core.health_score == 2  # two nacks expected, none came
    assert w.core.stats()["probes_failed"] == 1


@pytest.mark.parametrize(("nacks", "score"), [(0, 2), (1, 1), (2, 0)])
def test_nacks_feed_awareness(nacks: int, score: int) -> None:
    w = Lone()
    t0, addr, ping = w.first_probe()
    w.run_until(t0 + 0.5)
    peers = [a for _, a, _ in w.sent(IndirectPingReq)]
    for p in peers[:nacks]:
        w.feed(p, Nack(ping.seq_no), at=t0 + 0.9)
    w.run_until(t0 + 1.0)
    assert w.core.health_score == score


def test_failed_probe_without_nack_capable_peers_adds_one() -> None:
    w = Lone(peers={"a": V2, "b": V2})  # PMax 2: no nacks, no TCP ping
    t0, addr, ping = w.first_probe()
    w.run_until(t0 + 0.5)
    assert [r.nack for _, _, r in w.sent(IndirectPingReq)] == [False]
    assert w.streams == []
    w.run_until(t0 + 1.0)
    assert w.core.health_score == 1


def test_relayed_ack_with_the_same_seqno_saves_the_probe() -> None:
    w = Lone()
    t0, addr, ping = w.first_probe()
    w.run_until(t0 + 0.5)
    relay = w.sent(IndirectPingReq)[0][1]
    w.feed(relay, Ack(ping.seq_no), at=t0 + 0.7)
    w.run_until(t0 + 1.5)
    assert not [e for e in w.events if isinstance(e, MemberSuspected)]
    assert w.core.health_score == 0


def test_tcp_ack_alone_keeps_the_target_alive() -> None:
    w = Lone()
    t0, addr, ping = w.first_probe()
    w.run_until(t0 + 0.5)
    ((_, req),) = w.streams
    reply = packet.encode_stream(
        encode_message(Ack(ping.seq_no)), compress=True, keyring=None, rng=random.Random(1)
    )
    w.run_until(t0 + 0.6)
    w.core.receive_stream_reply(req.stream_id, reply, now=w.now)
    w.run_until(t0 + 1.0)
    assert not [e for e in w.events if isinstance(e, MemberSuspected)]
    assert w.core.stats()["probes_saved_by_tcp"] == 1


def test_tcp_ping_failure_does_not_raise() -> None:
    w = Lone()
    t0, addr, ping = w.first_probe()
    w.run_until(t0 + 0.5)
    ((_, req),) = w.streams
    w.core.stream_failed(req.stream_id, now=t0 + 0.6)
    w.run_until(t0 + 1.0)
    assert len([e for e in w.events if isinstance(e, MemberSuspected)]) == 1


@pytest.mark.parametrize(("vsn", "crc"), [(V5, True), (V4, False)])
def test_buddy_probe_to_a_suspect_is_crc_compound_ping_suspect(vsn: bytes, crc: bool) -> None:
    w2 = Lone(lan().with_(enable_compression=False), peers={"a": vsn})
    w2.feed(("10.0.0.3", 7946), Suspect(1, "a", "other"))
    data = None
    while data is None:
        d = w2.core.next_deadline()
        w2.core.handle_timer(now=d)
        for _, payload in w2.core.datagrams_to_send():
            if Ping in {type(m) for m in decode(payload)}:
                data = payload
        w2.core.streams_to_open()
    if crc:
        assert data[0] == 12
        assert struct.unpack(">I", data[1:5])[0] == zlib.crc32(data[5:])
        inner = data[5:]
    else:
        inner = data
    assert inner[0] == 7 and inner[1] == 2  # a compound of exactly two parts, nothing piggybacked
    msgs = decode(data)
    assert isinstance(msgs[0], Ping) and msgs[0].node == "a"
    assert msgs[1] == Suspect(1, "a", "me")


def test_pings_and_acks_are_never_crc_wrapped() -> None:
    w = Lone(lan().with_(enable_compression=False))
    raw: list[bytes] = []
    while len(raw) < 3:
        d = w.core.next_deadline()
        w.core.handle_timer(now=d)
        for _, data in w.core.datagrams_to_send():
            if any(isinstance(m, Ping) for m in decode(data)):
                raw.append(data)
                ping = next(m for m in decode(data) if isinstance(m, Ping))
                w.core.receive_datagram(("10.0.0.2", 7946), dgram(Ack(ping.seq_no)), now=d + 0.01)
                w.core.datagrams_to_send()
    assert all(data[0] in (0, 7) for data in raw)  # plain ping or compound(ping, piggybacked...)
    w.core.receive_datagram(("10.0.0.2", 7946), dgram(Ping(9, "me")), now=d + 0.1)
    ((addr, ack),) = w.core.datagrams_to_send()
    assert addr == ("10.0.0.2", 7946) and ack[0] in (2, 7)


def test_ping_is_answered_to_source_addr_and_port() -> None:
    w = Lone(peers={})
    w.core.receive_datagram(
        ("127.0.0.1", 5555), dgram(Ping(42, "me", bytes([10, 0, 0, 9]), 7000, "x")), now=0.1
    )
    ((addr, data),) = w.core.datagrams_to_send()
    assert addr == ("10.0.0.9", 7000)
    assert decode(data)[0] == Ack(42, None)
    w.core.receive_datagram(("127.0.0.1", 5555), dgram(Ping(43, "")), now=0.2)  # no source: UDP source
    ((addr, data),) = w.core.datagrams_to_send()
    assert addr == ("127.0.0.1", 5555) and decode(data)[0] == Ack(43, None)
    w.core.receive_datagram(("127.0.0.1", 5555), dgram(Ping(44, "someone-else")), now=0.3)
    assert w.core.datagrams_to_send() == []


def test_relaying_an_indirect_ping_forwards_the_ack() -> None:
    w = Lone(peers={})
    req = IndirectPingReq(77, ip("c"), 7946, "c", True, ip("a"), 7000, "a")
    w.core.receive_datagram(("10.9.9.9", 1), dgram(req), now=1.0)
    ((addr, data),) = w.core.datagrams_to_send()
    assert addr == ("10.0.0.4", 7946)
    (ping,) = [m for m in decode(data) if isinstance(m, Ping)]
    assert ping.node == "c" and ping.seq_no != 77 and ping.source_node == "me"
    w.core.receive_datagram(("10.0.0.4", 7946), dgram(Ack(ping.seq_no, b"payload")), now=1.2)
    ((addr, data),) = w.core.datagrams_to_send()
    assert addr == ("10.0.0.2", 7000)  # SourceAddr:SourcePort, not the UDP source
    assert decode(data)[0] == Ack(77, None)
    w.core.handle_timer(now=1.5)
    assert [m for _, d in w.core.datagrams_to_send() for m in decode(d) if isinstance(m, Nack)] == []


def test_relay_without_ack_nacks_after_probe_timeout() -> None:
    w = Lone(peers={})
    w.core.receive_datagram(("10.9.9.9", 1), dgram(IndirectPingReq(5, ip("c"), 7946, "c", True)), now=1.0)
    w.core.datagrams_to_send()
    assert w.core.next_deadline() <= 1.5
    w.core.handle_timer(now=1.499)
    assert w.core.datagrams_to_send() == []
    w.core.handle_timer(now=1.5)
    ((addr, data),) = w.core.datagrams_to_send()
    assert addr == ("10.9.9.9", 1)  # no Source*: the UDP source
    assert decode(data)[0] == Nack(5)


def test_relay_without_nack_flag_stays_silent() -> None:
    w = Lone(peers={})
    w.core.receive_datagram(("10.9.9.9", 1), dgram(IndirectPingReq(5, ip("c"), 7946, "c", False)), now=1.0)
    w.core.datagrams_to_send()
    w.core.handle_timer(now=1.6)
    assert [m for _, d in w.core.datagrams_to_send() for m in decode(d) if isinstance(m, (Nack, Ack))] == []


def test_probe_interval_and_timeout_scale_with_health() -> None:
    w = Lone(peers={"a": V2, "b": V2, "c": V2})
    t0, _, _ = w.first_probe()
    w.run_until(t0 + 1.0)  # failed: score 1
    assert w.core.health_score == 1
    pings = w.sent(Ping)
    while len(pings) < 2:
        w.run_until(w.now + 0.05)
        pings = w.sent(Ping)
    t1 = pings[1][0]
    assert t1 == pytest.approx(t0 + 1.0)  # the next round starts when the failed one ends
    w.run_until(t1 + 0.999)
    assert {t for t, _, _ in w.sent(IndirectPingReq)} == {t0 + 0.5}  # scaled timeout 1.0 not reached
    w.run_until(t1 + 1.0)
    assert [t for t, _, _ in w.sent(IndirectPingReq, since=t1)] == [pytest.approx(t1 + 1.0)]
    w.run_until(t1 + 1.999)
    assert not [
        e for e in w.events if isinstance(e, MemberSuspected) and e.member.name != w.sent(Ping)[0][2].node
    ]
    w.run_until(t1 + 2.0)  # the scaled protocol period (2 s) ends: the second target is suspected
    assert len([e for e in w.events if isinstance(e, MemberSuspected)]) == 2


def test_user_message_in_datagram_becomes_an_event() -> None:
    w = Lone(peers={})
    w.core.receive_datagram(("10.0.0.5", 7946), dgram(UserMsg(b"hello")), now=0.5)
    ev = [e for e in iter(w.core.next_event, None)]
    assert any(getattr(e, "payload", None) == b"hello" and e.src == ("10.0.0.5", 7946) for e in ev)
