"""The per-network transmit-limited queue: supersede only by newer, local first, bounded, visible."""

from __future__ import annotations

from meshnet.networkdb.broadcast import NetworkQueue


def raw(n: int = 10) -> bytes:
    return b"x" * n


def keys(items):
    return [i.key for i in items]


def test_newer_version_supersedes_queued_one():
    q = NetworkQueue(max_len=10)
    assert q.enqueue("k", (1, "a"), raw(), is_local=False)
    assert q.enqueue("k", (2, "a"), raw(), is_local=False)
    assert len(q) == 1 and q.get("k").precedence == (2, "a")
    assert q.stats.superseded == 1


def test_older_or_equal_version_never_replaces_queued_one():
    # moby#53479: libnetwork invalidated by key regardless of ltime, so a stale value could win.
    q = NetworkQueue(max_len=10)
    q.enqueue("k", (5, "b"), raw(), is_local=False)
    assert not q.enqueue("k", (5, "a"), raw(), is_local=True)
    assert not q.enqueue("k", (4, "z"), raw(), is_local=False)
    assert not q.enqueue("k", (5, "b"), raw(), is_local=False)
    assert q.get("k").precedence == (5, "b") and q.stats.refused_stale == 3


def test_local_writes_go_before_rebroadcasts():
    q = NetworkQueue(max_len=1000)
    for i in range(200):
        q.enqueue(f"relay{i}", (i + 1, "r"), raw(50), is_local=False)
    q.enqueue("mine", (1, "me"), raw(50), is_local=True)
    batch, large = q.take(budget_bytes=120, limit=10)
    assert keys(batch)[0] == "mine" and not large


def test_fewest_transmits_first_newest_first_among_fresh():
    q = NetworkQueue(max_len=10)
    q.enqueue("old", (1, "a"), raw(), is_local=False)
    q.enqueue("new", (2, "a"), raw(), is_local=False)
    assert keys(q.take(10, limit=5)[0]) == ["new"]
    assert keys(q.take(10, limit=5)[0]) == ["old"]
    # both sent once now: the one that reached that count last goes first
    assert keys(q.take(10, limit=5)[0]) == ["old"]
    assert keys(q.take(10, limit=5)[0]) == ["new"]


def test_batch_fills_budget_and_skips_items_that_do_not_fit():
    q = NetworkQueue(max_len=10)
    q.enqueue("small", (1, "a"), raw(15), is_local=True)
    q.enqueue("mid", (2, "a"), raw(50), is_local=True)
    q.enqueue("big", (3, "a"), raw(80), is_local=True)
    batch, _ = q.take(100, limit=5)
    assert keys(batch) == ["big", "small"]


def test_retransmit_limit_removes_item():
    q = NetworkQueue(max_len=10)
    q.enqueue("k", (1, "a"), raw(), is_local=True)
    for _ in range(3):
        assert keys(q.take(100, limit=3)[0]) == ["k"]
    assert len(q) == 0 and q.stats.completed == 1 and q.stats.transmitted == 3


def test_item_larger_than_a_datagram_is_returned_apart():
    q = NetworkQueue(max_len=10)
    q.enqueue("huge", (2, "a"), raw(5000), is_local=True)
    q.enqueue("tiny", (1, "a"), raw(10), is_local=True)
    batch, large = q.take(1000, limit=2)
    assert keys(large) == ["huge"] and keys(batch) == ["tiny"]
    batch, large = q.take(1000, limit=2)
    assert keys(large) == ["huge"] and keys(batch) == ["tiny"]
    assert len(q) == 0


def test_bounded_evicts_most_sent_rebroadcast_first():
    q = NetworkQueue(max_len=3)
    q.enqueue("mine", (1, "me"), raw(), is_local=True)
    q.enqueue("r1", (1, "r"), raw(), is_local=False)
    q.enqueue("r2", (2, "r"), raw(), is_local=False)
    q.take(1000, limit=100)  # everything sent once
    q.enqueue("r3", (3, "r"), raw(), is_local=False)
    assert len(q) == 3 and "mine" in q and "r3" in q and q.stats.evicted == 1
    assert q.stats.max_len_seen == 3


def test_full_of_local_writes_drops_rebroadcast_and_evicts_local_for_local():
    q = NetworkQueue(max_len=2)
    q.enqueue("a", (1, "me"), raw(), is_local=True)
    q.enqueue("b", (2, "me"), raw(), is_local=True)
    assert not q.enqueue("r", (9, "x"), raw(), is_local=False)
    assert q.stats.dropped_full == 1
    assert q.enqueue("c", (3, "me"), raw(), is_local=True)
    assert len(q) == 2 and "c" in q and q.stats.evicted == 1


def test_superseding_when_full_needs_no_eviction():
    q = NetworkQueue(max_len=1)
    q.enqueue("k", (1, "a"), raw(), is_local=False)
    assert q.enqueue("k", (2, "a"), raw(), is_local=False)
    assert q.stats.evicted == 0


def test_stats_as_dict():
    q = NetworkQueue(max_len=4)
    q.enqueue("k", (1, "a"), raw(), is_local=True)
    assert q.stats.as_dict()["enqueued"] == 1 and q.local_len == 1


def test_skip_set_keeps_one_interval_from_sending_an_item_twice():
    q = NetworkQueue(max_len=10)
    q.enqueue("a", (1, "x"), raw(), is_local=True)
    q.enqueue("b", (2, "x"), raw(), is_local=True)
    sent: set = set()
    assert keys(q.take(15, limit=5, skip=sent)[0]) == ["b"]
    assert keys(q.take(15, limit=5, skip=sent)[0]) == ["a"]
    assert q.take(15, limit=5, skip=sent) == ([], []) and sent == {"a", "b"}


def test_rebroadcasts_leave_after_relay_limit_local_writes_after_limit():
    q = NetworkQueue(max_len=10)
    q.enqueue("mine", (1, "me"), raw(), is_local=True)
    q.enqueue("relay", (1, "r"), raw(), is_local=False)
    sends = {"mine": 0, "relay": 0}
    for _ in range(6):
        for item in q.take(1000, limit=4, relay_limit=2)[0]:
            sends[item.key] += 1
    assert sends == {"mine": 4, "relay": 2} and len(q) == 0 and q.stats.completed == 2


def test_nbytes_is_the_sum_of_queued_sizes():
    q = NetworkQueue(max_len=3)
    q.enqueue("a", (1, "x"), raw(10), is_local=False)
    q.enqueue("b", (1, "x"), raw(20), is_local=False)
    assert q.nbytes == 30
    q.enqueue("a", (2, "x"), raw(15), is_local=False)  # supersede
    assert q.nbytes == 35
    q.enqueue("c", (1, "x"), raw(5), is_local=True)
    q.enqueue("d", (1, "x"), raw(7), is_local=True)  # full: evicts a rebroadcast
    assert q.nbytes == sum(len(q.get(k).raw) for k in "abcd" if k in q)
    for _ in range(3):
        q.take(1000, limit=3, relay_limit=1)
    assert len(q) == 0 and q.nbytes == 0
