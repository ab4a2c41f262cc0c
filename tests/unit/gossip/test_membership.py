"""Merge rules of memberlist-wire.md 8.6/8.7, one rule per test, exact effects."""

from __future__ import annotations

import random
from collections import Counter, deque

import pytest

from meshnet.core.clock import DeadlineHeap
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.broadcast_queue import BroadcastQueue
from meshnet.gossip.codec import decode_message
from meshnet.gossip.config import GossipConfig, lan
from meshnet.gossip.events import (
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    NameConflict,
)
from meshnet.gossip.membership import REMOTE_RULES, SELF_RULES, Action, Membership, NodeState
from meshnet.gossip.messages import DEFAULT_VSN, Alive, Dead, NodeStateType, PushNodeState, Suspect

IP = {
    "me": bytes([10, 0, 0, 1]),
    "a": bytes([10, 0, 0, 2]),
    "b": bytes([10, 0, 0, 3]),
    "c": bytes([10, 0, 0, 4]),
}


class World:
    def __init__(self, config: GossipConfig | None = None, now: float = 0.0) -> None:
        self.queue = BroadcastQueue(4)
        self.awareness = Awareness(8)
        self.heap = DeadlineHeap()
        self.events: deque = deque()
        self.stats: Counter = Counter()
        self.local = NodeState("me", IP["me"], 7946, b"", 1, DEFAULT_VSN, now)
        self.m = Membership(
            config or lan(),
            local=self.local,
            rng=random.Random(1),
            queue=self.queue,
            awareness=self.awareness,
            heap=self.heap,
            events=self.events,
            stats=self.stats,
            now=now,
        )
        self.take_events()
        self.queue.clear()

    def take_events(self) -> list:
        out = list(self.events)
        self.events.clear()
        return out

    def broadcasts(self) -> list:
        return [decode_message(b.msg) for b in self.queue]

    def alive(
        self, name: str, inc: int = 1, *, now: float = 0.0, addr: bytes | None = None, meta: bytes = b""
    ) -> Action:
        return self.m.alive(Alive(inc, name, addr or IP[name], 7946, meta, DEFAULT_VSN), now=now)

    def state(self, name: str) -> str:
        return {m.name: m.state for m in self.m.members()}[name]


def test_rule_tables_cover_every_state() -> None:
    for kind in ("alive", "suspect", "dead"):
        for st in [None, *NodeStateType]:
            assert (kind, st) in REMOTE_RULES
        assert (kind, NodeStateType.ALIVE) in SELF_RULES
        assert (kind, NodeStateType.LEFT) in SELF_RULES


def test_unknown_alive_is_added_and_rebroadcast() -> None:
    w = World()
    assert w.alive("a", 3, meta=b"m") is Action.ADD
    (ev,) = w.take_events()
    assert isinstance(ev, MemberJoined) and ev.member.name == "a" and ev.member.addr == "10.0.0.2"
    assert ev.member.incarnation == 3 and ev.member.meta == b"m"
    assert w.broadcasts() == [Alive(3, "a", IP["a"], 7946, b"m", DEFAULT_VSN)]
    assert w.m.num_nodes == 2


def test_alive_needs_a_higher_incarnation() -> None:
    w = World()
    w.alive("a", 3)
    w.take_events()
    w.queue.clear()
    assert w.alive("a", 3, meta=b"new") is Action.IGNORE
    assert w.alive("a", 2) is Action.IGNORE
    assert w.take_events() == [] and len(w.queue) == 0
    assert w.alive("a", 4, meta=b"new") is Action.UPDATE
    (ev,) = w.take_events()
    assert isinstance(ev, MemberUpdated) and ev.member.meta == b"new"


def test_alive_with_bad_versions_is_ignored() -> None:
    w = World()
    bad = Alive(1, "a", IP["a"], 7946, b"", bytes([2, 1, 2, 2, 5, 5]))  # PMin > PMax
    assert w.m.alive(bad, now=0.0) is Action.IGNORE
    assert w.m.get("a") is None
    assert w.stats["alive_bad_version"] == 1
    # also about a known member, when the alive is not newer (the shortcut must not skip the check)
    w.alive("a", 2)
    assert w.m.alive(Alive(1, "a", IP["a"], 7946, b"", bytes([2, 1, 2, 2, 5, 5])), now=0.0) is Action.IGNORE
    assert w.stats["alive_bad_version"] == 2


def test_suspect_then_timeout_three_nodes() -> None:
    w = World()
    w.alive("a")
    w.alive("b")
    w.take_events()
    w.queue.clear()
    assert w.m.suspect(Suspect(1, "a", "b"), now=10.0) is Action.SUSPECT
    (ev,) = w.take_events()
    assert isinstance(ev, MemberSuspected) and ev.from_node == "b" and ev.member.state == "suspect"
    assert w.heap.get(("suspect", "a")) == 14.0  # n = 3: k = 0, min = 4 s
    assert w.broadcasts() == [Suspect(1, "a", "b")]
    assert w.heap.pop_due(14.0) == [("suspect", "a")]
    w.m.suspicion_expired("a", now=14.0)
    (ev,) = w.take_events()
    assert isinstance(ev, MemberFailed) and ev.from_node == "me" and ev.member.state == "dead"
    assert w.broadcasts() == [Dead(1, "a", "me")]
    assert w.heap.get(("reap", "a")) == 14.0 + 24 * 3600


def test_suspect_with_older_incarnation_is_ignored() -> None:
    w = World()
    w.alive("a", 5)
    w.take_events()
    assert w.m.suspect(Suspect(4, "a", "b"), now=1.0) is Action.IGNORE
    assert w.state("a") == "alive"


def test_confirmations_from_distinct_senders_shrink_the_deadline() -> None:
    w = World()
    for n in ("a", "b", "c"):
        w.alive(n)
    w.m.suspect(Suspect(1, "a", "b"), now=10.0)
    assert w.heap.get(("suspect", "a")) == 34.0  # n = 4: k = 2, max = 24 s
    w.queue.clear()
    assert w.m.suspect(Suspect(1, "a", "b"), now=11.0) is Action.IGNORE  # same accuser
    assert len(w.queue) == 0
    assert w.m.suspect(Suspect(1, "a", "c"), now=11.0) is Action.CONFIRM
    assert w.heap.get(("suspect", "a")) == pytest.approx(21.381, abs=1e-9)
    assert w.broadcasts() == [Suspect(1, "a", "c")]  # a new confirmation is re-gossiped
    assert w.m.suspect(Suspect(1, "a", "me"), now=12.0) is Action.CONFIRM
    assert w.heap.get(("suspect", "a")) == pytest.approx(14.0, abs=1e-9)


def test_overdue_confirmation_kills_at_once() -> None:
    w = World()
    for n in ("a", "b", "c"):
        w.alive(n)
    w.m.suspect(Suspect(1, "a", "b"), now=0.0)
    w.take_events()
    w.m.suspect(Suspect(1, "a", "c"), now=12.0)  # 11.381 s already passed
    assert [type(e) for e in w.take_events()] == [MemberFailed]
    assert ("suspect", "a") not in w.heap


def test_alive_refutes_a_suspicion() -> None:
    w = World()
    w.alive("a")
    w.alive("b")
    w.m.suspect(Suspect(1, "a", "b"), now=1.0)
    w.take_events()
    assert w.alive("a", 2, now=2.0) is Action.UPDATE
    (ev,) = w.take_events()
    assert isinstance(ev, MemberUpdated) and ev.member.state == "alive"
    assert ("suspect", "a") not in w.heap and "a" not in w.m.suspicions


def test_dead_from_itself_is_left_and_from_others_is_failed() -> None:
    w = World()
    w.alive("a")
    w.alive("b")
    w.take_events()
    assert w.m.dead(Dead(1, "a", "a"), now=5.0) is Action.FAIL
    (ev,) = w.take_events()
    assert isinstance(ev, MemberLeft) and ev.member.state == "left"
    assert w.heap.get(("reap", "a")) == 5.0 + 24 * 3600
    assert w.m.dead(Dead(1, "b", "c"), now=5.0) is Action.FAIL
    (ev,) = w.take_events()
    assert isinstance(ev, MemberFailed) and ev.from_node == "c"
    assert w.m.dead(Dead(2, "b", "c"), now=6.0) is Action.IGNORE  # already dead
    assert w.m.dead(Dead(0, "c", "c"), now=6.0) is Action.IGNORE  # unknown
    assert list(w.m.failed) == ["b"]


def test_dead_with_older_incarnation_is_ignored() -> None:
    w = World()
    w.alive("a", 3)
    assert w.m.dead(Dead(2, "a", "b"), now=1.0) is Action.IGNORE
    assert w.state("a") == "alive"


def test_newer_alive_revives_a_dead_member() -> None:
    w = World()
    w.alive("a")
    w.m.dead(Dead(1, "a", "b"), now=1.0)
    w.take_events()
    assert w.alive("a", 1, now=2.0) is Action.IGNORE
    assert w.alive("a", 2, now=2.0) is Action.REVIVE
    (ev,) = w.take_events()
    assert isinstance(ev, MemberJoined) and ev.member.state == "alive"
    assert ("reap", "a") not in w.heap and list(w.m.failed) == []


def test_name_conflict_is_rejected() -> None:
    w = World()
    w.alive("a")
    w.take_events()
    assert w.alive("a", 9, addr=IP["c"]) is Action.CONFLICT
    (ev,) = w.take_events()
    assert isinstance(ev, NameConflict)
    assert ev.existing.addr == "10.0.0.2" and (ev.other_addr, ev.other_port) == ("10.0.0.4", 7946)
    assert w.m.get("a").addr == IP["a"] and w.m.get("a").incarnation == 1


def test_conflict_about_ourselves() -> None:
    w = World()
    assert w.alive("me", 5, addr=IP["c"]) is Action.CONFLICT
    assert isinstance(w.take_events()[0], NameConflict)
    assert w.local.incarnation == 1


def test_left_name_may_move_to_another_address() -> None:
    w = World()
    w.alive("a")
    w.m.dead(Dead(1, "a", "a"), now=1.0)
    w.take_events()
    assert w.alive("a", 1, addr=IP["c"], now=2.0) is Action.REVIVE  # even at the same incarnation
    assert w.m.get("a").addr_str == "10.0.0.4"
    assert isinstance(w.take_events()[0], MemberJoined)


def test_dead_name_is_reclaimed_only_after_reclaim_time() -> None:
    w = World(lan().with_(dead_node_reclaim_time=10.0))
    w.alive("a")
    w.m.dead(Dead(1, "a", "b"), now=1.0)
    assert w.alive("a", 2, addr=IP["c"], now=5.0) is Action.CONFLICT
    assert w.alive("a", 2, addr=IP["c"], now=11.5) is Action.REVIVE
    never = World()  # default 0 = never
    never.alive("a")
    never.m.dead(Dead(1, "a", "b"), now=1.0)
    assert never.alive("a", 2, addr=IP["c"], now=1e6) is Action.CONFLICT


@pytest.mark.parametrize("kind", ["suspect", "dead"])
def test_refute_accusation_about_us(kind: str) -> None:
    w = World()
    msg = Suspect(5, "me", "a") if kind == "suspect" else Dead(5, "me", "a")
    assert getattr(w.m, kind)(msg, now=1.0) is Action.REFUTE
    assert w.local.incarnation == 6  # max(own + 1, accused + 1)
    assert w.awareness.score == 1
    assert w.broadcasts() == [Alive(6, "me", IP["me"], 7946, b"", DEFAULT_VSN)]
    assert w.state("me") == "alive"
    w.queue.clear()
    assert getattr(w.m, kind)(type(msg)(2, "me", "a"), now=2.0) is Action.IGNORE  # older
    assert w.m.suspect(Suspect(6, "me", "b"), now=3.0) is Action.REFUTE
    assert w.local.incarnation == 7


def test_refute_uses_own_plus_one_when_accusation_is_older() -> None:
    w = World()
    w.local.incarnation = 9
    w.m.suspect(Suspect(9, "me", "a"), now=1.0)
    assert w.local.incarnation == 10


def test_alive_about_us_refuted_only_when_different() -> None:
    w = World()
    assert w.m.alive(Alive(1, "me", IP["me"], 7946, b"", DEFAULT_VSN), now=1.0) is Action.IGNORE
    assert w.m.alive(Alive(1, "me", IP["me"], 7946, b"other", DEFAULT_VSN), now=1.0) is Action.REFUTE
    assert w.local.incarnation == 2
    assert w.m.alive(Alive(7, "me", IP["me"], 7946, b"", DEFAULT_VSN), now=1.0) is Action.REFUTE
    assert w.local.incarnation == 8
    assert w.m.alive(Alive(3, "me", IP["me"], 7946, b"x", DEFAULT_VSN), now=1.0) is Action.IGNORE


def test_nothing_about_us_applies_after_we_left() -> None:
    w = World()
    w.m.leave_local(now=1.0)
    assert w.state("me") == "left"
    assert w.broadcasts() == [Dead(1, "me", "me")]
    for msg in (Suspect(3, "me", "a"), Dead(3, "me", "a")):
        assert getattr(w.m, type(msg).__name__.lower())(msg, now=2.0) is Action.IGNORE
    assert w.m.alive(Alive(9, "me", IP["me"], 7946, b"", DEFAULT_VSN), now=2.0) is Action.IGNORE
    assert w.local.incarnation == 1


def test_push_pull_merge_semantics() -> None:
    w = World()
    w.alive("b")
    w.take_events()
    states = [
        PushNodeState("a", IP["a"], 7946, b"", 1, NodeStateType.ALIVE),
        PushNodeState("b", IP["b"], 7946, b"", 1, NodeStateType.DEAD),  # dead remotely -> only suspect here
        PushNodeState("c", IP["c"], 7946, b"", 1, NodeStateType.LEFT),  # unknown + left: ignored
    ]
    w.m.merge_state(states, now=3.0)
    assert w.state("a") == "alive"
    assert w.state("b") == "suspect"
    assert "c" not in {m.name for m in w.m.members()}
    sus = [e for e in w.take_events() if isinstance(e, MemberSuspected)]
    assert sus[0].from_node == "me"
    w.m.merge_state([PushNodeState("a", IP["a"], 7946, b"", 1, NodeStateType.LEFT)], now=4.0)
    assert w.state("a") == "left"


def test_push_pull_showing_us_dead_makes_us_refute() -> None:
    w = World()
    w.m.merge_state([PushNodeState("me", IP["me"], 7946, b"", 4, NodeStateType.DEAD)], now=1.0)
    assert w.local.incarnation == 5


def test_verify_protocol() -> None:
    w = World()
    ok = [PushNodeState("a", IP["a"], 7946, b"", 1, 0, bytes([1, 5, 2, 2, 5, 5]))]
    assert w.m.verify_protocol(ok) is None
    bad = [PushNodeState("a", IP["a"], 7946, b"", 1, 0, bytes([3, 5, 3, 2, 5, 5]))]  # needs >= 3, we speak 2
    assert "protocol version (2) is incompatible: [3, 5]" in w.m.verify_protocol(bad)
    bad_d = [PushNodeState("a", IP["a"], 7946, b"", 1, 0, bytes([1, 5, 2, 2, 5, 1]))]
    assert "delegate protocol version (1)" in w.m.verify_protocol(bad_d)


def test_dead_members_leave_the_probe_list_after_gossip_to_the_dead_time() -> None:
    w = World()
    w.alive("a")
    w.alive("b")
    w.m.dead(Dead(1, "a", "b"), now=10.0)
    w.m.reset_nodes(now=39.0)
    assert w.m.num_nodes == 3
    w.m.reset_nodes(now=40.5)  # dead for more than 30 s
    assert w.m.num_nodes == 2 and w.m.get("a") is None
    assert w.state("a") == "dead"  # serf still lists it as failed
    w.take_events()
    assert w.alive("a", 1, now=41.0) is Action.ADD  # memberlist forgot it: a new node again
    assert isinstance(w.take_events()[0], MemberJoined)


def test_reap_forgets_the_member() -> None:
    w = World()
    w.alive("a")
    w.m.dead(Dead(1, "a", "a"), now=1.0)
    w.take_events()
    assert w.m.reap("a") is True
    assert w.take_events() == [MemberReaped("a")]
    assert "a" not in {m.name for m in w.m.members()} and w.m.num_nodes == 1
    assert w.m.reap("me") is False


def test_probe_order_skips_self_and_dead_and_visits_everyone() -> None:
    w = World()
    for n in ("a", "b", "c"):
        w.alive(n)
    w.m.dead(Dead(1, "c", "a"), now=0.0)
    seen = [w.m.next_probe_target(1.0).name for _ in range(4)]
    assert sorted(seen[:2]) == ["a", "b"] and sorted(seen[2:]) == ["a", "b"]


def test_verify_protocol_shortcut_answers_like_the_walk_in_order() -> None:
    r = random.Random(3)
    vectors = [DEFAULT_VSN, bytes([1, 5, 2, 2, 5, 4]), bytes([2, 4, 3, 2, 5, 5]), bytes([1, 5, 2]), b"",
               bytes([1, 3, 2, 3, 5, 3]), bytes([1, 5, 5, 2, 5, 5])]  # fmt: skip
    for _ in range(400):
        w = World()
        for name in ("a", "b", "c"):
            if r.random() < 0.5:
                w.m.alive(Alive(1, name, IP[name], 7946, b"", r.choice(vectors[:3])), now=0.0)
        remote = [
            PushNodeState(f"r{i}", IP["a"], 7946, b"", 1, r.choice([0, 0, 0, 1, 2, 3]), r.choice(vectors))
            for i in range(r.randint(0, 5))
        ]
        assert w.m.verify_protocol(remote) == w.m._verify_protocol_in_order(remote)
