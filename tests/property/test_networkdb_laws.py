"""Laws of NetworkDB's merge and wire codec, as hypothesis properties.

- ``table.merge`` is commutative, associative and idempotent; ``merge_tables`` of any permutation of
  the same records gives the same table; a tombstone is never beaten by an older or equal-version
  live record;
- versions are totally ordered: ``compare`` is antisymmetric, transitive and total, and equal exactly
  when the precedences are equal;
- the facade's receive path converges: two nodes fed the same remote records in different orders and
  batchings end with the same table (and the same digest);
- ``decode(encode(m)) == m`` for every message body; split bulk syncs carry exactly their input;
- fuzz: random bytes, truncations and bit flips of valid payloads raise nothing but ``DecodeError``
  from ``codec.decode``, and nothing at all from ``NetworkDB.receive``.
"""

from __future__ import annotations

import random
from contextlib import suppress
from functools import reduce

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.core.errors import DecodeError
from meshnet.networkdb import NetworkDB, codec, fast
from meshnet.networkdb.entry import Entry
from meshnet.networkdb.messages import (
    AttachmentEvents,
    BulkSync,
    Envelope,
    PushPullState,
    Request,
    Response,
    StateSync,
    SyncMode,
    TableEvents,
    WireAttachment,
    WireEntry,
)
from meshnet.networkdb.table import compare, merge, merge_tables

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(["a", "b", "c", "node-10"])
small_text = st.text(alphabet="abcxyz-é", min_size=1, max_size=6)
ltimes = st.integers(1, 6)
values = st.sampled_from([b"", b"v", b"w", b"\x00\xff"])
reaps = st.one_of(st.none(), st.sampled_from([1.0, 2.5, 9.0]))


@st.composite
def entries(draw, slot=("n", "t", "k")):
    """Records of one slot (small domains, so equal versions and ties are common)."""
    deleted = draw(st.booleans())
    return Entry(
        table=slot[1],
        network=slot[0],
        key=slot[2],
        value=draw(values),
        owner=draw(names),
        ltime=draw(ltimes),
        deleted=deleted,
        reap_at=draw(reaps) if deleted else None,
        hidden=draw(st.booleans()),
    )


@st.composite
def any_slot_entries(draw):
    slot = (draw(st.sampled_from(["", "n"])), "t", draw(st.sampled_from(["k1", "k2", "k3"])))
    return draw(entries(slot=slot))


class TestMergeLaws:
    @FAST
    @given(entries(), entries())
    def test_commutative(self, a, b):
        assert merge(a, b) == merge(b, a)

    @FAST
    @given(entries(), entries(), entries())
    def test_associative(self, a, b, c):
        assert merge(merge(a, b), c) == merge(a, merge(b, c))

    @FAST
    @given(entries(), entries())
    def test_idempotent(self, a, b):
        assert merge(a, a) == a
        m = merge(a, b)
        assert merge(m, b) == m and merge(m, a) == m

    @FAST
    @given(entries(), entries())
    def test_result_is_one_of_the_versions(self, a, b):
        m = merge(a, b)
        assert m.precedence in (a.precedence, b.precedence)
        assert m.precedence == max(a.precedence, b.precedence)

    @FAST
    @given(entries(), entries())
    def test_tombstone_never_beaten_by_older_or_equal_live(self, tomb, live):
        if not tomb.deleted or live.deleted:
            return
        if live.version <= tomb.version:
            assert merge(tomb, live).deleted and merge(live, tomb).deleted

    @FAST
    @given(st.lists(any_slot_entries(), max_size=12), st.randoms(use_true_random=False))
    def test_merge_tables_order_independent(self, records, rnd):
        def fold(recs):
            return reduce(lambda t, e: merge_tables(t, {e.slot: e}), recs, {})

        shuffled = list(records)
        rnd.shuffle(shuffled)
        assert fold(records) == fold(shuffled)
        half = len(records) // 2
        assert merge_tables(fold(records[:half]), fold(records[half:])) == fold(records)


class TestTotalOrder:
    @FAST
    @given(entries(), entries())
    def test_antisymmetric_and_total(self, a, b):
        c = compare(a, b)
        assert c == -compare(b, a)
        assert (c == 0) == (a.precedence == b.precedence)

    @FAST
    @given(entries(), entries(), entries())
    def test_transitive(self, a, b, c):
        if compare(a, b) >= 0 and compare(b, c) >= 0:
            assert compare(a, c) >= 0

    @FAST
    @given(entries(), entries())
    def test_version_orders_first(self, a, b):
        if a.version != b.version:
            assert (compare(a, b) > 0) == (a.version > b.version)


def _wire(e: Entry) -> WireEntry:
    reap = int((e.reap_at or 0) * 1000) if e.deleted else 0
    return WireEntry(e.table, e.key, e.value, e.owner, e.ltime, e.deleted, False, reap)


class TestReceivePathConverges:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(any_slot_entries(), min_size=1, max_size=15), st.randoms(use_true_random=False))
    def test_same_records_any_order_same_table(self, records, rnd):
        cfg = fast().with_(join_global=False)
        dbs = []
        for seed in (1, 2):
            db = NetworkDB(cfg, name="me", rng=random.Random(seed), now=0.0)
            db.join_network("", now=0.0)
            db.join_network("n", now=0.0)
            dbs.append(db)
        batches_a = [[r] for r in records]
        shuffled = list(records)
        rnd.shuffle(shuffled)
        cut = rnd.randint(0, len(shuffled))
        batches_b = [shuffled[:cut], shuffled[cut:]]
        for db, batches in zip(dbs, (batches_a, batches_b)):
            for batch in batches:
                for net in ("", "n"):
                    part = tuple(_wire(e) for e in batch if e.network == net)
                    if part:
                        env = Envelope("peer", "", TableEvents(net, part))
                        db.receive(("10.0.0.9", 7946), codec.encode(env), now=0.0)
        for net in ("", "n"):
            a = [(e.slot, e.precedence) for e in dbs[0].walk_table("t", net, include_deleted=True)]
            b = [(e.slot, e.precedence) for e in dbs[1].walk_table("t", net, include_deleted=True)]
            assert a == b
            assert dbs[0]._store.digest(net) == dbs[1]._store.digest(net)


# -- codec ---------------------------------------------------------------------------------------

text = st.text(max_size=12)
nonempty = st.text(min_size=1, max_size=12)
lt = st.integers(1, 2**62)
wire_entries = st.builds(
    WireEntry,
    table=nonempty,
    key=nonempty,
    value=st.binary(max_size=40),
    owner=nonempty,
    ltime=lt,
    deleted=st.booleans(),
    hidden=st.booleans(),
    reap_in_ms=st.integers(0, 2**40),
)
wire_atts = st.builds(
    WireAttachment,
    node=nonempty,
    network=text,
    ltime=lt,
    leaving=st.booleans(),
    floor=st.integers(0, 2**62),
    reap_in_ms=st.integers(0, 2**40),
)
ids = st.integers(0, 2**63)
sections = st.lists(st.tuples(text, st.lists(wire_entries, max_size=4).map(tuple)), max_size=3).map(tuple)


@st.composite
def bulk_syncs(draw):
    parts = draw(st.integers(1, 5))
    return BulkSync(
        sync_id=draw(ids),
        mode=draw(st.sampled_from(list(SyncMode))),
        part=draw(st.integers(0, parts - 1)),
        parts=parts,
        networks=tuple(draw(st.lists(text, max_size=3))),
        attachments=tuple(draw(st.lists(wire_atts, max_size=3))),
        digests=tuple(draw(st.lists(st.tuples(text, st.integers(0, 2**64 - 1)), max_size=3))),
        want=tuple(draw(st.lists(text, max_size=3))),
        sections=draw(sections),
    )


@st.composite
def state_syncs(draw):
    parts = draw(st.integers(1, 5))
    return StateSync(
        draw(ids),
        draw(st.booleans()),
        draw(st.integers(0, parts - 1)),
        parts,
        tuple(draw(st.lists(wire_atts, max_size=4))),
    )


bodies = st.one_of(
    st.builds(TableEvents, network=text, entries=st.lists(wire_entries, max_size=5).map(tuple)),
    st.builds(AttachmentEvents, attachments=st.lists(wire_atts, max_size=5).map(tuple)),
    st.builds(PushPullState, attachments=st.lists(wire_atts, max_size=5).map(tuple)),
    bulk_syncs(),
    state_syncs(),
    st.builds(Request, request_id=ids, payload=st.binary(max_size=64)),
    st.builds(Response, request_id=ids, payload=st.binary(max_size=64)),
)
envelopes = st.builds(Envelope, sender=nonempty, cluster_id=st.text(max_size=8), body=bodies)


class TestCodec:
    @FAST
    @given(envelopes)
    def test_round_trip(self, env):
        assert codec.decode(codec.encode(env)) == env

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(wire_atts, max_size=20),
        st.lists(
            st.tuples(nonempty, st.lists(wire_entries, max_size=30)), max_size=3, unique_by=lambda s: s[0]
        ),
        st.sampled_from(list(SyncMode)),
    )
    def test_split_bulk_sync_carries_its_input(self, atts, secs, mode):
        nets = [n for n, _ in secs]
        parts = codec.encode_bulk_sync(
            "s",
            "",
            sync_id=1,
            mode=mode,
            networks=nets,
            attachments=atts,
            want=nets,
            sections=secs,
            max_bytes=2048,
        )
        got = [codec.decode(p).body for p in parts]
        assert [g.part for g in got] == list(range(len(parts)))
        assert [a for g in got for a in g.attachments] == atts
        for net, ws in secs:
            assert [w for g in got for n, es in g.sections if n == net for w in es] == ws


def _valid_payloads():
    return envelopes.map(codec.encode)


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randint(0, 2)
        if op == 0 and b:
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and len(b) > 1:
            del b[rnd.randrange(1, len(b)) :]
        else:
            b.insert(rnd.randrange(1, len(b) + 1), rnd.randrange(256))
    return bytes(b)


class TestFuzz:
    @FUZZ
    @given(st.binary(max_size=200))
    def test_random_bytes_only_decode_error(self, data):
        with suppress(DecodeError):
            codec.decode(b"\x6e" + data)

    @FUZZ
    @given(_valid_payloads(), st.randoms(use_true_random=False))
    def test_mutations_only_decode_error(self, data, rnd):
        with suppress(DecodeError):
            codec.decode(_mutate(data, rnd))

    @FUZZ
    @given(
        st.lists(st.one_of(_valid_payloads(), st.binary(max_size=80)), max_size=8),
        st.randoms(use_true_random=False),
    )
    def test_receive_never_raises(self, payloads, rnd):
        db = NetworkDB(fast(), name="me", rng=random.Random(3), now=0.0)
        db.join_network("n", now=0.0)
        db.node_alive("peer", ("10.0.0.2", 7946), incarnation=1, now=0.0)
        now = 0.0
        for p in payloads:
            for data in (p, _mutate(p, rnd) if p else p, b"\x6e" + p):
                now += 0.25
                db.receive(("10.0.0.2", 7946), data, now=now)
                db.handle_timer(now=now)
        db.handle_timer(now=now + 10_000.0)
        db.messages_to_send()
        db.broadcasts_to_send()
        while db.next_event() is not None:
            pass
