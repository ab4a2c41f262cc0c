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


class _ReferenceQueue:
    """The queue's rules written the plain way (one sorted list, a linear scan per pick)."""

    def __init__(self, mult: int) -> None:
        self.mult = mult
        self.items: list[list] = []  # [transmits, id, key, msg]
        self.next_id = 0

    def queue(self, msg: bytes, key: str | None = None) -> None:
        if key is not None:
            self.items = [it for it in self.items if it[2] != key]
        self.next_id += 1
        self.items.append([0, self.next_id, key, msg])

    def get_broadcasts(self, overhead: int, limit: int, n: int) -> list[bytes]:
        from meshnet.gossip.util import retransmit_limit

        tl = retransmit_limit(self.mult, n)
        order = sorted(self.items, key=lambda it: (it[0], -len(it[3]), -it[1]))
        used, out, taken = 0, [], []
        for t in sorted({it[0] for it in order}):
            for it in [x for x in order if x[0] == t]:
                free = limit - used - overhead
                if free <= 0:
                    break
                if len(it[3]) <= free:
                    used += overhead + len(it[3])
                    out.append(it[3])
                    taken.append(it)
            if limit - used - overhead <= 0:
                break
        for it in taken:
            it[0] += 1
            if it[0] >= tl:
                self.items.remove(it)
        return out

    def prune(self, keep: int) -> int:
        dropped = 0
        while len(self.items) > keep:
            order = sorted(self.items, key=lambda it: (it[0], -len(it[3]), -it[1]))
            self.items.remove(order[-1])
            dropped += 1
        return dropped


def test_matches_the_plain_rules_on_random_scripts() -> None:
    import random

    for seed in range(300):
        rng = random.Random(seed)
        q, ref = BroadcastQueue(rng.choice([1, 2, 4])), None
        ref = _ReferenceQueue(q.retransmit_mult)
        sizes = rng.sample(range(0, 40), rng.randint(1, 5))
        for _ in range(rng.randint(1, 120)):
            op = rng.random()
            if op < 0.45:
                key = rng.choice([None, "a", "b", "c", "d", "e", "f"])
                msg = bytes([rng.randrange(256)]) * rng.choice(sizes)
                q.queue(msg, key)
                ref.queue(msg, key)
            elif op < 0.95:
                args = (rng.choice([0, 1, 2]), rng.randint(0, 90), rng.choice([3, 10, 200]))
                assert q.get_broadcasts(*args) == ref.get_broadcasts(*args), seed
            else:
                keep = rng.randint(0, 6)
                assert q.prune(keep) == ref.prune(keep)
            assert len(q) == len(ref.items)
            assert [b.msg for b in q] == [
                it[3] for it in sorted(ref.items, key=lambda it: (it[0], -len(it[3]), -it[1]))
            ]
