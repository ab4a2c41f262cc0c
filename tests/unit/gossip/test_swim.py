"""The ``Swim`` facade end to end on the fake link (explicit virtual time, exact values)."""

from __future__ import annotations

import random

import pytest
from helpers import MiniCluster, addr_of, decode

from meshnet.core.drive import drain, fire_due
from meshnet.core.errors import LocalProtocolError
from meshnet.gossip import packet
from meshnet.gossip.codec import encode_message
from meshnet.gossip.config import lan
from meshnet.gossip.events import (
    JoinCompleted,
    JoinFailed,
    LeaveCompleted,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    MessageRejected,
    NameConflict,
    UserMessageReceived,
)
from meshnet.gossip.keyring import Keyring
from meshnet.gossip.messages import Alive, Dead, ErrResp, Ping, PushNodeState, PushPull, Suspect, UserMsg
from meshnet.gossip.serf import LeaveIntent, decode_intent, decode_push_pull_state
from meshnet.gossip.swim import Swim
from meshnet.gossip.util import suspicion_timeout


def booted(n: int, **kw) -> MiniCluster:
    c = MiniCluster(n, **kw)
    c.join_all()
    assert c.run_until(c.now + 10.0, until=c.converged)
    return c


@pytest.mark.parametrize("n", [3, 4, 5])
def test_join_converges(n: int) -> None:
    c = MiniCluster(n)
    c.join_all()
    assert c.run_until(5.0, until=c.converged), {k: c.view(k) for k in c.nodes}
    for name in list(c.nodes)[1:]:
        (done,) = c.events_of(name, JoinCompleted)
        assert done.seed == addr_of(0)
    for name in c.nodes:
        assert all(m.incarnation == 1 for m in c.nodes[name].members())
        assert {e.member.name for e in c.events_of(name, MemberJoined)} == set(c.nodes)


def test_join_reply_lists_the_seed_before_merging_the_joiner() -> None:
    c = MiniCluster(2)
    c.join("n1", ["n0"])
    c.run_for(0.0025)
    (done,) = c.events_of("n1", JoinCompleted)
    assert done.members == 1  # n0's reply did not yet contain n1


def test_join_to_nobody_fails() -> None:
    c = MiniCluster(2)
    c.crash("n0")
    c.join("n1", ["n0"])
    c.run_for(lan().tcp_timeout + 0.1)
    (failed,) = c.events_of("n1", JoinFailed)
    assert failed.seed == addr_of(0)
    c.call("n1", "join", [addr_of(1)])
    assert c.events_of("n1", JoinFailed)[-1].reason == "seed is this node"


def test_three_nodes_failure_detected_4s_after_suspicion() -> None:
    c = booted(3)
    t_kill = c.now + 2.0
    c.run_until(t_kill)
    c.crash("n2")
    c.run_for(20.0)
    spans = []
    for obs in ("n0", "n1"):
        sus = [e for e in c.events[obs] if isinstance(e, MemberSuspected) and e.member.name == "n2"]
        dead = [e for e in c.events[obs] if isinstance(e, MemberFailed) and e.member.name == "n2"]
        assert len(dead) == 1
        spans.append(dead[0].member.state_changed_at - sus[0].member.state_changed_at)
        # first suspicion -> dead min = 4 s later (k = 0 with 3 nodes), or a little earlier or
        # later when both the suspicion and the death arrived by gossip
        assert spans[-1] == pytest.approx(4.0, abs=0.25)
        # detection bound: n2 is probed once per round of 2 probes (the list is reshuffled each
        # round), so the next probe starts at most 3 periods after the kill, fails 1 period later,
        # and the suspicion lasts 4 s; plus delivery
        assert dead[0].member.state_changed_at - t_kill <= 3 * 1.0 + 1.0 + 4.0 + 0.01
    assert any(span == pytest.approx(4.0) for span in spans)  # the one whose own timer ran out
    assert c.view("n0") == {"n0": "alive", "n1": "alive", "n2": "dead"}


def test_four_nodes_counting_a_dead_and_a_left_one_take_24s() -> None:
    c = booted(4)
    c.call("n3", "leave")
    c.run_for(1.0)
    assert c.nodes["n3"].is_left
    c.crash("n3")
    c.crash("n2")
    c.run_for(16.0)  # one confirmation (from n1): 11.381 s after the suspicion
    assert c.view("n0") == {"n0": "alive", "n1": "alive", "n2": "dead", "n3": "left"}
    c.crash("n1")
    start = len(c.events["n0"])
    c.run_for(30.0)
    new = c.events["n0"][start:]
    sus = [e for e in new if isinstance(e, MemberSuspected) and e.member.name == "n1"]
    dead = [e for e in new if isinstance(e, MemberFailed) and e.member.name == "n1"]
    assert len(sus) == 1 and len(dead) == 1
    assert dead[0].member.state_changed_at - sus[0].member.state_changed_at == pytest.approx(24.0)


def test_confirmations_shorten_suspicion_in_bigger_cluster() -> None:
    c = booted(5)
    c.crash("n4")
    c.run_for(30.0)
    lo = suspicion_timeout(4, 5, 1.0)
    for obs in ("n0", "n1", "n2", "n3"):
        (dead,) = [e for e in c.events[obs] if isinstance(e, MemberFailed) and e.member.name == "n4"]
        sus = [e for e in c.events[obs] if isinstance(e, MemberSuspected) and e.member.name == "n4"][0]
        took = dead.member.state_changed_at - sus.member.state_changed_at
        assert took < 6 * lo  # confirmations from the other observers cut it below the 24 s max
        assert took >= lo - 1e-9 or dead.from_node != obs  # never before min when we declare it ourselves


def test_suspect_about_self_is_refuted_with_higher_incarnation() -> None:
    c = booted(3)
    bogus = packet.encode_datagram(
        [encode_message(Suspect(1, "n1", "n2"))],
        crc=False,
        compress=False,
        keyring=None,
        rng=random.Random(1),
    )
    c.nodes["n1"].receive_datagram(addr_of(2), bogus, now=c.now)
    c._flush("n1")
    assert c.nodes["n1"].incarnation == 2
    assert c.nodes["n1"].health_score == 1
    c.run_for(1.0)
    assert {m.name: m.incarnation for m in c.nodes["n0"].members()}["n1"] == 2
    assert c.view("n0")["n1"] == "alive"


def test_graceful_leave_intent_then_dead_then_completed() -> None:
    c = booted(3)
    t = c.now
    c.call("n2", "leave")
    c.run_for(3.0)
    sent = c.sent_by("n2", since=t)
    first_intent = next(i for i, s in enumerate(sent) if any(isinstance(m, UserMsg) for m in s.messages))
    first_dead = next(i for i, s in enumerate(sent) if any(isinstance(m, Dead) for m in s.messages))
    assert first_intent < first_dead
    intent = next(decode_intent(m.payload) for m in sent[first_intent].messages if isinstance(m, UserMsg))
    assert isinstance(intent, LeaveIntent) and intent.node == "n2"
    dead = next(m for m in sent[first_dead].messages if isinstance(m, Dead))
    assert dead == Dead(1, "n2", "n2")
    (done,) = c.events_of("n2", LeaveCompleted)
    assert done.drained is True
    core = c.nodes["n2"]
    assert core.is_left and core.next_deadline() is None
    for obs in ("n0", "n1"):
        assert c.view(obs)["n2"] == "left"
        assert [e.member.name for e in c.events_of(obs, MemberLeft)] == ["n2"]
    # nothing is probed or answered any more
    before = len(c.sent_by("n2"))
    c.run_for(5.0)
    assert len(c.sent_by("n2")) == before
    ping = packet.encode_datagram(
        [encode_message(Ping(5, "n2"))], crc=False, compress=False, keyring=None, rng=random.Random(1)
    )
    core.receive_datagram(addr_of(0), ping, now=c.now)
    assert core.datagrams_to_send() == [] and core.stats()["dropped_after_leave"] == 1
    with pytest.raises(LocalProtocolError):
        core.send_user(b"x", now=c.now)


def test_leave_alone_completes_at_once() -> None:
    c = MiniCluster(1)
    c.call("n0", "leave")
    (done,) = c.events_of("n0", LeaveCompleted)
    assert done.drained and c.nodes["n0"].is_left
    assert c.view("n0") == {"n0": "left"}


def test_leave_that_cannot_drain_is_bounded_by_leave_timeout_in_total() -> None:
    cfg = lan().with_(gossip_nodes=0)  # only piggybacking could carry it, and nobody pings us
    c = MiniCluster(3, config=cfg)
    c.join_all()
    c.run_for(6.0)
    c.crash("n0")
    c.crash("n1")
    t = c.now
    c.call("n2", "leave")
    c.run_until(t + 4.99)
    assert not c.nodes["n2"].is_left
    c.run_until(t + 5.0)
    (done,) = c.events_of("n2", LeaveCompleted)
    assert done.drained is False
    assert c.nodes["n2"].is_left
    # the intent had half of leave_timeout, the dead the other half
    assert c.nodes["n2"].members()[-1].state_changed_at == pytest.approx(t + 2.5)


def test_two_members_leaving_together_both_finish_at_once() -> None:
    """Each one's broadcasts can only go to the other; once one hears that the other left, nobody
    alive is left to tell, so it completes there and then (drained) instead of waiting out
    leave_timeout, and the other completes when its own broadcasts drained."""
    c = booted(2)
    c.run_for(5.0)
    c.call("n0", "leave")
    c.call("n1", "leave")
    c.run_for(2.0)
    for name in ("n0", "n1"):
        (done,) = c.events_of(name, LeaveCompleted)
        assert done.drained is True
        assert c.nodes[name].is_left
    assert sum(c.nodes[n].stats().get("leave_nobody_alive", 0) for n in ("n0", "n1")) >= 1


def test_leave_completes_when_the_last_other_member_leaves_meanwhile() -> None:
    cfg = lan().with_(gossip_nodes=0, leave_timeout=60.0)
    c = booted(2, config=cfg)
    c.run_for(5.0)
    c.call("n1", "leave")  # the intent cannot drain: nobody pings n1 and it does not gossip
    assert not c.nodes["n1"].is_left
    core = c.nodes["n1"]
    dead = packet.encode_datagram(
        [encode_message(Dead(incarnation=1, node="n0", from_node="n0"))],
        crc=False, compress=False, keyring=None, rng=random.Random(1),
    )  # fmt: skip
    core.receive_datagram(addr_of(0), dead, now=c.now)
    events = []
    while (ev := core.next_event()) is not None:
        events.append(ev)
    kinds = [type(e).__name__ for e in events]
    assert kinds[-2:] == ["MemberLeft", "LeaveCompleted"] and events[-2].member.name == "n1"
    assert events[-1].drained is True and core.is_left


def test_last_leave_datagrams_come_out_with_leave_completed() -> None:
    """The tick that sends the dead's last transmit also completes the leave: a driver must send the
    datagrams of that drain before it stops."""
    c = booted(3)
    c.run_for(5.0)
    core = c.nodes["n2"]
    core.leave(now=c.now)
    out = drain(core)
    t = c.now
    while not any(isinstance(e, LeaveCompleted) for e in out.events):
        assert out.deadline is not None and out.deadline - t < 6.0
        t = out.deadline
        out = fire_due(core, t)
        if any(isinstance(e, LeaveCompleted) for e in out.events):
            break
    assert out.datagrams, "the final transmits are in the same drain as LeaveCompleted"
    sent = [m for _, data in out.datagrams for m in packet.decode_datagram(data, keyring=None)]
    assert Dead(incarnation=1, node="n2", from_node="n2") in sent


def test_name_conflict_from_another_address() -> None:
    c = booted(2)
    impostor = c.add("n1", addr=("10.0.0.77", 7946))
    c.by_addr[("10.0.0.77", 7946)] = "n1-impostor"
    c.nodes["n1-impostor"] = impostor
    c.events["n1-impostor"] = []
    impostor.join([addr_of(0)], now=c.now)
    c._flush("n1-impostor")
    c.run_for(0.01)
    conflicts = c.events_of("n0", NameConflict)
    assert conflicts and conflicts[0].existing.addr == "10.0.0.2"
    assert (conflicts[0].other_addr, conflicts[0].other_port) == ("10.0.0.77", 7946)
    assert {m.name: m.addr for m in c.nodes["n0"].members()}["n1"] == "10.0.0.2"


def test_remote_garbage_is_counted_never_raised() -> None:
    c = MiniCluster(1)
    core = c.nodes["n0"]
    core.receive_datagram(("10.0.0.9", 1), b"\xff\x00garbage", now=0.1)
    core.receive_datagram(("10.0.0.9", 1), b"", now=0.1)
    core.receive_datagram(("10.0.0.9", 1), b"\x0c\x00\x00\x00\x00\x00", now=0.1)  # bad CRC
    reply = core.receive_stream(("127.0.0.1", 9), b"\x06\xc1", now=0.2)
    assert isinstance(packet.decode_stream(reply, keyring=None), ErrResp)
    rejected = [e for e in iter(core.next_event, None) if isinstance(e, MessageRejected)]
    assert len(rejected) == 4
    assert core.stats()["decode_errors"] == 4
    core.receive_stream_reply(12345, b"junk", now=0.3)
    core.stream_failed(12345, now=0.3)


def test_unknown_alive_with_bad_address_is_ignored() -> None:
    c = MiniCluster(1)
    bad = packet.encode_datagram(
        [encode_message(Alive(1, "x", b"\x01\x02", 7946))],
        crc=False,
        compress=False,
        keyring=None,
        rng=random.Random(1),
    )
    c.nodes["n0"].receive_datagram(("10.0.0.9", 1), bad, now=0.1)
    assert c.view("n0") == {"n0": "alive"}


def test_user_broadcast_reaches_everyone() -> None:
    c = booted(4)
    c.call("n0", "send_user", b"hello")
    c.run_for(2.0)
    for name in ("n1", "n2", "n3"):
        got = [e for e in c.events_of(name, UserMessageReceived) if e.payload == b"hello"]
        assert got and got[0].src in {addr_of(i) for i in range(4)}
    with pytest.raises(LocalProtocolError):
        c.call("n0", "send_user", b"x" * 2000)


def test_send_user_to_udp_and_tcp() -> None:
    c = booted(2)
    c.call("n0", "send_user_to", addr_of(1), b"udp-msg")
    c.call("n0", "send_user_to", addr_of(1), b"tcp-msg", reliable=True)
    c.run_for(0.01)
    got = {e.payload: e.src for e in c.events_of("n1", UserMessageReceived)}
    assert got[b"udp-msg"] == addr_of(0)
    assert got[b"tcp-msg"][0] == "127.0.0.1"  # the TCP source, never a node address


def test_inbound_push_pull_answered_with_same_join_flag_then_merged() -> None:
    core = Swim(lan(), name="me", addr=("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    req = PushPull(join=False, states=(PushNodeState("x", bytes([10, 0, 0, 5]), 7946, b"", 1, 0),))
    framed = packet.encode_stream(encode_message(req), compress=True, keyring=None, rng=random.Random(2))
    reply = packet.decode_stream(core.receive_stream(("127.0.0.1", 1), framed, now=1.0), keyring=None)
    assert isinstance(reply, PushPull) and reply.join is False
    assert [s.name for s in reply.states] == ["me"]
    state = decode_push_pull_state(reply.user_state)
    assert state.status_ltimes == {"me": 0}
    assert {m.name: m.state for m in core.members()} == {"me": "alive", "x": "alive"}


def test_join_accepts_a_peer_without_user_state() -> None:
    core = Swim(lan(), name="me", addr=("10.0.0.1", 7946), rng=random.Random(1), now=0.0, serf_compat=False)
    core.join([("10.0.0.5", 7946)], now=0.0)
    (req,) = core.streams_to_open()
    sent = packet.decode_stream(req.data, keyring=None)
    assert sent.join is True and sent.user_state == b"" and [s.name for s in sent.states] == ["me"]
    reply = PushPull(join=True, states=(PushNodeState("x", bytes([10, 0, 0, 5]), 7946, b"", 3, 0),))
    core.receive_stream_reply(
        req.stream_id,
        packet.encode_stream(encode_message(reply), compress=False, keyring=None, rng=random.Random(2)),
        now=0.1,
    )
    events = list(iter(core.next_event, None))
    assert JoinCompleted(("10.0.0.5", 7946), 1) in events
    assert {m.name: m.incarnation for m in core.members()} == {"me": 1, "x": 3}


def test_incompatible_protocol_fails_the_join() -> None:
    core = Swim(lan(), name="me", addr=("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    core.join([("10.0.0.5", 7946)], now=0.0)
    (req,) = core.streams_to_open()
    bad = PushPull(
        join=True,
        states=(PushNodeState("x", bytes([10, 0, 0, 5]), 7946, b"", 1, 0, bytes([3, 5, 3, 2, 5, 5])),),
    )
    core.receive_stream_reply(
        req.stream_id,
        packet.encode_stream(encode_message(bad), compress=False, keyring=None, rng=random.Random(2)),
        now=0.1,
    )
    failed = [e for e in iter(core.next_event, None) if isinstance(e, JoinFailed)]
    assert failed and "incompatible" in failed[0].reason
    assert [m.name for m in core.members()] == ["me"]


def test_periodic_push_pull_is_not_a_join() -> None:
    c = booted(3)
    c.run_for(5.0)  # past the post-join syncs
    t = c.now
    c.run_for(30.0)  # one push_pull_interval: each node starts exactly one
    pulls = [(name, packet.decode_stream(req.data, keyring=None)) for at, name, req in c.stream_log if at > t]
    pulls = [(name, pp) for name, pp in pulls if isinstance(pp, PushPull)]
    assert sorted(name for name, _ in pulls) == ["n0", "n1", "n2"]
    assert all(pp.join is False and len(pp.states) == 3 for _, pp in pulls)


def test_set_meta_bumps_incarnation_and_updates_peers() -> None:
    c = booted(3)
    c.call("n1", "set_meta", b"\xff\x81\xa4role\xa2db")
    c.run_for(1.0)
    upd = [e for e in c.events_of("n0", MemberUpdated) if e.member.name == "n1"]
    assert upd[-1].member.meta == b"\xff\x81\xa4role\xa2db" and upd[-1].member.incarnation == 2
    with pytest.raises(LocalProtocolError):
        c.call("n1", "set_meta", b"x" * 513)


def test_dead_members_are_not_probed_but_listed_until_reaped() -> None:
    cfg = lan().with_(reconnect_timeout=60.0, reconnect_interval=0.0)
    c = booted(3, config=cfg)
    c.crash("n2")
    c.run_for(15.0)
    (dead,) = [e for e in c.events_of("n0", MemberFailed) if e.member.name == "n2"]
    t_dead = dead.member.state_changed_at
    pings = [
        s
        for s in c.sent_by("n0", since=t_dead + 0.01)
        if s.dst == addr_of(2) and any(isinstance(m, Ping) for m in s.messages)
    ]
    assert pings == []
    c.run_until(t_dead + 59.9)
    assert c.view("n0")["n2"] == "dead"
    c.run_until(t_dead + 60.0)
    assert MemberReaped("n2") in c.events["n0"]
    assert "n2" not in c.view("n0")


def test_reconnect_brings_back_a_failed_member() -> None:
    cfg = lan().with_(reconnect_interval=10.0)
    c = booted(3, config=cfg)
    c.crash("n2")
    c.run_for(12.0)
    assert c.view("n0")["n2"] == "dead" and c.view("n1")["n2"] == "dead"
    c.down.discard("n2")  # it comes back (it never noticed it was gone)
    c.run_for(25.0)
    assert c.view("n0")["n2"] == "alive"
    assert c.nodes["n2"].incarnation >= 2  # it had to refute its death
    assert c.nodes["n0"].stats().get("reconnects", 0) + c.nodes["n1"].stats().get("reconnects", 0) >= 1


def test_rejoin_seeds_when_alone() -> None:
    cfg = lan().with_(reconnect_interval=0.0, rejoin_interval=20.0)
    c = booted(2, config=cfg)
    c.partition(["n0"], ["n1"])
    c.run_for(15.0)
    assert c.view("n1")["n0"] == "dead" and c.view("n0")["n1"] == "dead"
    c.heal()
    c.run_for(30.0)
    assert c.view("n1")["n0"] == "alive" and c.view("n0")["n1"] == "alive"
    assert c.nodes["n1"].stats()["rejoins"] >= 1


def test_gossip_is_crc_wrapped_for_pmax5_and_probes_never_are() -> None:
    c = booted(3, config=lan().with_(enable_compression=False))
    c.call("n0", "send_user", b"news")
    t = c.now
    c.run_for(1.0)
    gossip = probes = 0
    for s in c.sent_by("n0", since=t):
        if any(type(m).__name__ in ("Ping", "Ack", "IndirectPingReq", "Nack") for m in s.messages):
            assert s.data[0] != 12
            probes += 1
        else:
            assert s.data[0] == 12
            gossip += 1
    assert gossip >= 1 and probes >= 1


def test_encrypted_cluster_converges_and_rejects_plaintext() -> None:
    key = bytes(range(32))
    c = MiniCluster()
    for _ in range(3):
        c.add(keyring=Keyring([key]))
    c.join_all()
    assert c.run_until(5.0, until=c.converged)
    core = c.nodes["n0"]
    plain = packet.encode_datagram(
        [encode_message(Ping(1, "n0"))], crc=False, compress=False, keyring=None, rng=random.Random(1)
    )
    before = core.stats().get("decode_errors", 0)
    core.receive_datagram(("10.0.0.9", 1), plain, now=c.now)
    assert core.stats()["decode_errors"] == before + 1
    assert core.datagrams_to_send() == []


def test_same_seed_same_bytes() -> None:
    def run() -> list[tuple[float, str, bytes]]:
        c = MiniCluster(4, seed=11)
        c.join_all()
        c.run_for(5.0)
        c.crash("n3")
        c.run_for(10.0)
        return [(s.at, s.src, s.data) for s in c.sent]

    assert run() == run()


def test_events_and_members_of_a_fresh_node() -> None:
    core = Swim(lan(), name="solo", addr=("10.0.0.1", 7946), meta=b"m", rng=random.Random(1), now=5.0)
    (ev,) = list(iter(core.next_event, None))
    assert isinstance(ev, MemberJoined) and ev.member.name == "solo" and ev.member.meta == b"m"
    (me,) = core.members()
    assert (me.addr, me.port, me.state, me.incarnation, me.vsn) == (
        "10.0.0.1",
        7946,
        "alive",
        1,
        bytes([1, 5, 2, 2, 5, 5]),
    )
    assert core.next_deadline() is not None and core.next_deadline() >= 5.0
    with pytest.raises(LocalProtocolError):
        Swim(lan(), name="x", addr=("not-an-ip", 1), rng=random.Random(1), now=0.0)


def test_decode_helper_roundtrip() -> None:
    assert decode(encode_message(Ping(3, "a"))) == [Ping(3, "a")]


def test_rejoin_when_no_seed_is_a_live_member_even_if_others_are() -> None:
    """libnetwork's rule: e joined only through seed a (cut off), then d joined e; after the heal e
    still has a live member (d) but none of its seeds, so it re-joins a and the island merges."""
    cfg = lan().with_(reconnect_interval=0.0, rejoin_interval=20.0)
    c = MiniCluster(4, config=cfg)
    c.join("n1", ["n0"])
    assert c.run_until(2.0, until=lambda: c.converged(["n0", "n1"]))
    c.partition(["n0", "n1"], ["n2", "n3"])
    c.join("n2", ["n0"])
    c.run_for(1.0)
    c.join("n3", ["n2", "n0"])
    c.run_for(cfg.tcp_timeout + 1.0)
    assert c.view("n2") == {"n2": "alive", "n3": "alive"}
    c.heal()
    assert c.run_until(c.now + 25.0, until=c.converged)
    assert c.nodes["n2"].stats()["rejoins"] >= 1
    assert c.nodes["n3"].stats().get("rejoins", 0) == 0  # its seed n2 is alive: nothing to do


def test_push_pull_reply_is_cached_until_something_changes() -> None:
    core = Swim(lan(), name="me", addr=("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    req = PushPull(join=False, states=(PushNodeState("x", bytes([10, 0, 0, 5]), 7946, b"", 1, 0),))
    framed = packet.encode_stream(encode_message(req), compress=True, keyring=None, rng=random.Random(2))
    core.receive_stream(("127.0.0.1", 1), framed, now=1.0)
    first = core.receive_stream(("127.0.0.1", 1), framed, now=2.0)
    assert core.receive_stream(("127.0.0.1", 1), framed, now=3.0) == first
    sus = packet.encode_datagram(
        [encode_message(Suspect(1, "x", "y"))], crc=False, compress=False, keyring=None, rng=random.Random(1)
    )
    core.receive_datagram(("10.0.0.9", 1), sus, now=4.0)
    reply = packet.decode_stream(core.receive_stream(("127.0.0.1", 1), framed, now=5.0), keyring=None)
    assert {s.name: s.state for s in reply.states} == {"me": 0, "x": 1}


def test_a_death_is_gossiped_at_once_not_at_the_next_tick() -> None:
    """Applying a new dead (failed or left) sends a gossip round in the same step, so each hop of
    the rumour costs a network latency, not up to a gossip interval; at most one such round per
    quarter gossip interval."""
    c = booted(4)
    c.run_for(5.0)
    core = c.nodes["n0"]
    drain(core)
    t = c.now

    def dead(name: str) -> bytes:
        return packet.encode_datagram(
            [encode_message(Dead(incarnation=1, node=name, from_node="n1"))],
            crc=False, compress=False, keyring=None, rng=random.Random(1),
        )  # fmt: skip

    core.receive_datagram(addr_of(1), dead("n2"), now=t)
    out = drain(core)
    carried = [m for _, data in out.datagrams for m in decode(data)]
    assert Dead(incarnation=1, node="n2", from_node="n1") in carried
    assert core.stats()["gossip_urgent"] == 1
    core.receive_datagram(addr_of(1), dead("n3"), now=t + 0.01)  # within a quarter interval
    assert core.stats()["gossip_urgent"] == 1
    core.receive_datagram(addr_of(1), dead("n2"), now=t + 0.2)  # nothing new: no round
    assert core.stats()["gossip_urgent"] == 1


def test_drop_membership_broadcasts_keeps_user_broadcasts_and_refuses_while_leaving() -> None:
    core = Swim(lan(), name="me", addr=("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    for i in range(3):
        alive = Alive(incarnation=1, node=f"x{i}", addr=bytes([10, 0, 0, 5 + i]), port=7946, meta=b"")
        core.receive_datagram(("10.0.0.9", 7946), plain_dgram(alive), now=0.1)
    core.send_user(b"news", now=0.2)
    drain(core)
    assert core.drop_membership_broadcasts() == 4  # our own alive and the three we heard
    assert core.drop_membership_broadcasts() == 0
    t = 0.2
    sent: list[bytes] = []
    while t < 2.0:
        t = core.next_deadline()
        got = fire_due(core, t)
        sent += [data for _, data in got.datagrams]
    parts = [m for data in sent for m in packet.decode_datagram(data, keyring=None)]
    assert not any(isinstance(m, Alive) for m in parts)  # the rumours are gone, the news is not
    assert any(isinstance(m, UserMsg) and m.payload == b"news" for m in parts)
    core.leave(now=t)
    with pytest.raises(LocalProtocolError):
        core.drop_membership_broadcasts()


def plain_dgram(msg) -> bytes:
    return packet.encode_datagram(
        [encode_message(msg)], crc=False, compress=False, keyring=None, rng=random.Random(1)
    )


def test_send_user_to_can_skip_compression_for_one_message() -> None:
    """``compress=False`` frames one user message without LZW although the config compresses (memberlist
    compresses per message; receivers take both). 0x09 is memberlist's compressMsg type."""
    core = Swim(lan(), name="me", addr=("10.0.0.1", 7946), rng=random.Random(1), now=0.0)
    assert core.config.enable_compression
    payload = b"table-entry " * 20
    core.send_user_to(("10.0.0.2", 7946), payload, now=0.0)
    core.send_user_to(("10.0.0.2", 7946), payload, compress=False, now=0.0)
    core.send_user_to(("10.0.0.2", 7946), payload, reliable=True, compress=False, now=0.0)
    (_, compressed), (_, plain) = core.datagrams_to_send()
    assert compressed[0] == 0x09 and plain[0] == 0x08 and plain == b"\x08" + payload
    (stream,) = core.streams_to_open()
    assert stream.data[0] != 0x09 and payload in stream.data
    peer = Swim(lan(), name="peer", addr=("10.0.0.2", 7946), rng=random.Random(2), now=0.0)
    for data in (compressed, plain):
        peer.receive_datagram(("10.0.0.1", 7946), data, now=0.1)
    got = [e.payload for e in iter(peer.next_event, None) if isinstance(e, UserMessageReceived)]
    assert got == [payload, payload]
