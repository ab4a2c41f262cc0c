"""Transmit-limited broadcast queue: invalidation, retransmit limits, packing."""

from __future__ import annotations

from meshnet.gossip.broadcast_queue import BroadcastQueue


def test_named_broadcast_invalidates_older_one() -> None:
    q = BroadcastQueue(4)
    old = q.queue(b"alive-x-1", key="x")
    q.queue(b"alive-y-1", key="y")
    new = q.queue(b"dead-x-1", key="x")
    assert old.done and not new.done
    assert len(q) == 2
    assert sorted(q.get_broadcasts(2, 1400, 3)) == [b"alive-y-1", b"dead-x-1"]


def test_unkeyed_broadcasts_never_invalidate() -> None:
    q = BroadcastQueue(4)
    q.queue(b"\x08one")
    q.queue(b"\x08one")
    assert len(q) == 2


def test_retransmit_limit_3_nodes_is_4_sends() -> None:
    q = BroadcastQueue(4)
    b = q.queue(b"m", key="x")
    sends = 0
    while q.get_broadcasts(2, 1400, 3):
        sends += 1
    assert sends == 4  # 4 * ceil(log10(4))
    assert b.done and len(q) == 0


def test_retransmit_limit_grows_with_nodes() -> None:
    q = BroadcastQueue(4)
    q.queue(b"m")
    sends = 0
    while q.get_broadcasts(2, 1400, 10):
        sends += 1
    assert sends == 8  # 4 * ceil(log10(11))


def test_fewest_transmits_first_then_largest_then_newest() -> None:
    q = BroadcastQueue(4)
    q.queue(b"aaaa", key="a")
    assert q.get_broadcasts(2, 1400, 3) == [b"aaaa"]  # a now has 1 transmit
    q.queue(b"bb", key="b")
    q.queue(b"cccccc", key="c")
    q.queue(b"dd", key="d")
    # tier 0: c (largest), then d (newer), then b; then tier 1: a
    assert q.get_broadcasts(2, 1400, 3) == [b"cccccc", b"dd", b"bb", b"aaaa"]


def test_byte_budget_counts_overhead_per_part() -> None:
    q = BroadcastQueue(4)
    q.queue(b"x" * 10, key="a")
    q.queue(b"y" * 10, key="b")
    q.queue(b"z" * 5, key="c")
    # 12 + 12 = 24 bytes fit in 26; 7 more would not; the 5-byte one does not fit either
    got = q.get_broadcasts(2, 26, 3)
    assert got == [b"y" * 10, b"x" * 10]
    # within a tier a smaller message that still fits is taken when the largest does not fit
    got = q.get_broadcasts(2, 7, 3)
    assert got == [b"z" * 5]
    assert q.get_broadcasts(2, 2, 3) == []  # no room at all


def test_one_call_never_sends_a_message_twice() -> None:
    q = BroadcastQueue(4)
    q.queue(b"m", key="x")
    assert q.get_broadcasts(2, 1400, 3) == [b"m"]


def test_prune_drops_most_sent_first() -> None:
    q = BroadcastQueue(10)
    a = q.queue(b"a")
    q.get_broadcasts(2, 1400, 3)  # a: 1 transmit
    b = q.queue(b"b")
    c = q.queue(b"c")
    assert q.prune(2) == 1
    assert a.done and not b.done and not c.done
    assert len(q) == 2
    q.clear()
    assert b.done and c.done and len(q) == 0
