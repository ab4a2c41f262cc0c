"""The two rules that repair a lost join rumour (``meshnet.gossip.antientropy``), exactly.

* unknown-sender sync: a datagram from a sender that is unknown or believed dead starts a push-pull
  (Join=False) with it ``sync_unknown_delay`` later, unless it became known meanwhile; once per
  address per ``push_pull_interval``; at most ``MAX_PENDING_SYNCS`` waiting;
* post-join syncs: after the first successful join, one push-pull with a random alive member at
  each of ``join_sync_offsets``.
"""

from __future__ import annotations

import random

from helpers import MiniCluster

from meshnet.core.drive import drain, fire_due
from meshnet.gossip import packet
from meshnet.gossip.antientropy import MAX_PENDING_SYNCS
from meshnet.gossip.codec import encode_message
from meshnet.gossip.config import GossipConfig, lan
from meshnet.gossip.messages import DEFAULT_VSN, Alive, Dead, Ping, PushNodeState, PushPull
from meshnet.gossip.swim import Swim

ME = ("10.0.0.1", 7946)
# no periodic tasks that open streams, so every stream below is one of the two rules
QUIET = lan().with_(push_pull_interval=0.0, reconnect_interval=0.0, rejoin_interval=0.0)


def core(config: GossipConfig = QUIET) -> Swim:
    c = Swim(config, name="me", addr=ME, rng=random.Random(7), now=0.0)
    drain(c)
    return c


def dgram(*msgs) -> bytes:
    return packet.encode_datagram(
        [encode_message(m) for m in msgs], crc=False, compress=False, keyring=None, rng=random.Random(1)
    )


def ping_from(name: str, ip: bytes, seq: int = 1) -> bytes:
    return dgram(Ping(seq_no=seq, node="me", source_addr=ip, source_port=7946, source_node=name))


def alive(name: str, ip: bytes, inc: int = 1) -> Alive:
    return Alive(incarnation=inc, node=name, addr=ip, port=7946, meta=b"", vsn=DEFAULT_VSN)


def pulls(c: Swim, until: float, start: float = 0.0) -> list[tuple[float, tuple[str, int], PushPull]]:
    """Run ``c``'s timers up to ``until``; the push-pulls it opens, with when."""
    out = []
    t = start
    while True:
        d = c.next_deadline()
        if d is None or d > until:
            break
        t = max(t, d)
        got = fire_due(c, t)
        for req in got.streams:
            msg = packet.decode_stream(req.data, keyring=None)
            if isinstance(msg, PushPull):
                out.append((t, req.addr, msg))
    return out


def test_ping_from_an_unknown_node_syncs_with_it_after_the_delay() -> None:
    c = core()
    c.receive_datagram(("10.0.0.9", 5000), ping_from("x", bytes([10, 0, 0, 9])), now=10.0)
    assert drain(c).streams == []  # nothing at once: its own rumour may still be on its way
    got = pulls(c, 12.0, 10.0)
    # to SourceAddr:SourcePort (not the UDP source), exactly sync_unknown_delay later, not a join
    assert [(t, addr, pp.join) for t, addr, pp in got] == [(11.0, ("10.0.0.9", 7946), False)]
    assert c.stats()["unknown_sender_syncs"] == 1


def test_no_sync_when_the_sender_became_known_meanwhile() -> None:
    c = core()
    c.receive_datagram(("10.0.0.9", 7946), ping_from("x", bytes([10, 0, 0, 9])), now=10.0)
    c.receive_datagram(("10.0.0.9", 7946), dgram(alive("x", bytes([10, 0, 0, 9]))), now=10.5)
    assert pulls(c, 15.0, 10.5) == []
    assert "unknown_sender_syncs" not in c.stats()


def test_known_alive_or_left_senders_never_sync_but_dead_ones_do() -> None:
    c = core()
    s = alive("s", bytes([10, 0, 0, 5]))  # the member that tells us about the others
    for i, name in enumerate(("a", "b", "c")):
        c.receive_datagram(("10.0.0.5", 7946), dgram(s, alive(name, bytes([10, 0, 1, i]))), now=1.0)
    c.receive_datagram(("10.0.0.5", 7946), dgram(Dead(incarnation=1, node="b", from_node="b")), now=1.0)
    c.receive_datagram(("10.0.0.5", 7946), dgram(Dead(incarnation=1, node="c", from_node="s")), now=1.0)
    drain(c)
    for i, name in enumerate(("a", "b", "c")):
        c.receive_datagram(("10.0.1.0", 1), ping_from(name, bytes([10, 0, 1, i]), seq=i + 1), now=2.0)
    got = pulls(c, 5.0, 2.0)
    assert [(t, addr) for t, addr, _ in got] == [(3.0, ("10.0.1.2", 7946))]  # only c, the failed one


def test_gossip_without_a_ping_is_judged_by_its_udp_source() -> None:
    c = core()
    c.receive_datagram(("10.0.0.5", 7946), dgram(alive("a", bytes([10, 0, 0, 5]))), now=1.0)  # itself
    c.receive_datagram(("10.0.0.5", 7946), dgram(alive("b", bytes([10, 0, 0, 6]))), now=1.5)  # a: known
    c.receive_datagram(("10.0.0.7", 7946), dgram(alive("b", bytes([10, 0, 0, 6]))), now=1.5)  # unknown
    assert [(t, addr) for t, addr, _ in pulls(c, 4.0, 1.5)] == [(2.5, ("10.0.0.7", 7946))]


def test_each_address_is_synced_once_per_push_pull_interval() -> None:
    c = core(QUIET.with_(sync_unknown_delay=1.0))
    interval = 30.0  # the cooldown: push_pull_interval, at least 30 s (also when push-pulls are off)
    src = ("10.0.0.9", 7946)
    times = []
    for t in (0.0, 2.0, 20.0, interval + 1.5):
        c.receive_datagram(src, ping_from("x", bytes([10, 0, 0, 9]), seq=int(t) + 1), now=t)
        times += [at for at, _, _ in pulls(c, t + 1.5, t)]
    assert times == [1.0, interval + 2.5]


def test_at_most_max_pending_syncs_wait() -> None:
    c = core()
    for i in range(MAX_PENDING_SYNCS + 5):
        c.receive_datagram((f"10.0.2.{i}", 7946), dgram(Ping(seq_no=i + 1, node="me")), now=1.0)
    assert len(pulls(c, 3.0, 1.0)) == MAX_PENDING_SYNCS


def test_disabled_and_after_leave_nothing_syncs() -> None:
    off = core(QUIET.with_(sync_unknown_delay=0.0))
    off.receive_datagram(("10.0.0.9", 7946), ping_from("x", bytes([10, 0, 0, 9])), now=1.0)
    assert pulls(off, 5.0, 1.0) == []
    c = core()
    c.receive_datagram(("10.0.0.9", 7946), ping_from("x", bytes([10, 0, 0, 9])), now=1.0)
    c.leave(now=1.2)  # alone: completes at once and cancels the pending sync
    assert c.is_left and c.next_deadline() is None


def test_post_join_syncs_at_one_two_and_four_seconds() -> None:
    c = core(QUIET.with_(rejoin_interval=0.0))
    seed = ("10.0.0.2", 7946)
    c.join([seed], now=0.0)
    (req,) = drain(c).streams
    states = tuple(
        PushNodeState(name=n, addr=bytes([10, 0, 0, i + 2]), port=7946, meta=b"", incarnation=1, state=0)
        for i, n in enumerate(("s", "a", "b"))
    )
    reply = packet.encode_stream(
        encode_message(PushPull(join=True, states=states)), compress=False, keyring=None, rng=random.Random(1)
    )
    c.receive_stream_reply(req.stream_id, reply, now=0.5)
    got = pulls(c, 10.0, 0.5)
    assert [t for t, _, _ in got] == [1.5, 2.5, 4.5]
    assert all(pp.join is False for _, _, pp in got)
    assert {addr for _, addr, _ in got} <= {("10.0.0.2", 7946), ("10.0.0.3", 7946), ("10.0.0.4", 7946)}
    assert c.stats()["join_syncs"] == 3
    # a second join does not schedule them again
    c.join([seed], now=20.0)
    (req,) = drain(c).streams
    c.receive_stream_reply(req.stream_id, reply, now=20.5)
    assert pulls(c, 40.0, 20.5) == []


def test_a_missed_join_rumour_is_repaired_by_the_joiners_first_ping() -> None:
    """n3 joins through n0 while n1 hears nothing of it (its UDP from everyone is cut and the
    rumour is lost); the first datagram n1 gets from n3 afterwards makes n1 sync with n3."""
    c = MiniCluster(4, config=QUIET.with_(join_sync_offsets=()))
    for n in ("n1", "n2"):
        c.join(n, ["n0"])
    c.run_for(5.0)
    for src in ("n0", "n2", "n3"):
        c.drop_udp(src, "n1")
    c.join("n3", ["n0"])
    c.run_for(5.0)
    assert "n3" not in c.view("n1")
    c.heal()
    assert c.run_until(c.now + 30.0, until=lambda: "n3" in c.view("n1"))
    assert c.nodes["n1"].stats().get("unknown_sender_syncs", 0) >= 1


def test_missing_seed_rejoin_one_seed_per_tick_only_seeds_never_heard_of() -> None:
    """Seeds s (answers, alive), f (a member we hear has failed), u and v (never heard of). At each rejoin tick one of u, v gets a Join=True push-pull; s and f never do (a failed
    member is serf reconnect's job)."""
    # probes so rare that s stays alive (or at worst suspect) throughout
    c = core(QUIET.with_(rejoin_interval=20.0, join_sync_offsets=(), probe_interval=100.0))
    s, f, u, v = ((f"10.0.0.{i}", 7946) for i in (2, 3, 4, 5))
    c.join([s, f, u, v], now=0.0)
    reqs = {req.addr: req for req in drain(c).streams}
    states = tuple(
        PushNodeState(name=n, addr=bytes([10, 0, 0, i]), port=7946, meta=b"", incarnation=1, state=st)
        for n, i, st in (("s", 2, 0), ("f", 3, 0))
    )
    reply = packet.encode_stream(
        encode_message(PushPull(join=True, states=states)), compress=False, keyring=None, rng=random.Random(1)
    )
    c.receive_stream_reply(reqs[s].stream_id, reply, now=0.5)
    for addr in (f, u, v):
        c.stream_failed(reqs[addr].stream_id, now=0.5)
    c.receive_datagram(s, dgram(Dead(incarnation=1, node="f", from_node="s")), now=0.6)
    drain(c)
    assert {m.name: m.state for m in c.members()} == {"me": "alive", "s": "alive", "f": "dead"}
    got = pulls(c, 61.0, 0.6)
    assert [t for t, _, _ in got] == [20.0, 40.0, 60.0]
    assert {addr for _, addr, _ in got} <= {u, v}
    assert all(pp.join for _, _, pp in got)
    assert c.stats()["seed_rejoins"] == 3 and c.stats().get("rejoins", 0) == 0
