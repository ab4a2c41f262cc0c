"""Entries, the pure merge, the indexed table store, the Lamport clock and the config formulas."""

from __future__ import annotations

import pytest

from meshnet.core.errors import ConfigError, LocalProtocolError
from meshnet.networkdb import config as cfgmod
from meshnet.networkdb.entry import Attachment, Entry, Version
from meshnet.networkdb.lamport import MAX_LTIME, LamportClock
from meshnet.networkdb.table import TableStore, compare, entry_hash, merge, merge_tables


def e(
    key="k", value=b"v", owner="a", ltime=1, deleted=False, reap_at=None, network="n", table="t", hidden=False
):
    return Entry(table, network, key, value, owner, ltime, deleted, reap_at, hidden)


class TestVersionOrder:
    def test_ltime_then_owner(self):
        assert Version(2, "a") > Version(1, "z")
        assert Version(1, "b") > Version(1, "a")

    def test_higher_ltime_wins(self):
        assert merge(e(ltime=1), e(ltime=2, value=b"x")) == e(ltime=2, value=b"x")

    def test_equal_ltime_tie_broken_by_owner(self):
        a, b = e(owner="a", value=b"A"), e(owner="b", value=b"B")
        assert merge(a, b) == b and merge(b, a) == b

    def test_tombstone_never_resurrected_by_older_create(self):
        tomb = e(ltime=5, deleted=True, reap_at=100.0)
        assert merge(tomb, e(ltime=4)) == tomb
        assert merge(e(ltime=4), tomb) == tomb

    def test_tombstone_wins_same_version(self):
        tomb = e(ltime=5, deleted=True, reap_at=100.0)
        assert merge(e(ltime=5), tomb) == tomb
        assert compare(tomb, e(ltime=5)) == 1

    def test_same_write_keeps_earlier_reap(self):
        assert merge(e(deleted=True, reap_at=10.0), e(deleted=True, reap_at=7.0)).reap_at == 7.0

    def test_none_is_identity(self):
        assert merge(None, e()) == e() and merge(e(), None) == e() and merge(None, None) is None

    def test_merge_tables(self):
        x = {("n", "t", "a"): e("a", ltime=1), ("n", "t", "b"): e("b", ltime=3)}
        y = {("n", "t", "a"): e("a", ltime=2, value=b"new"), ("n", "t", "c"): e("c")}
        out = merge_tables(x, y)
        assert out[("n", "t", "a")].value == b"new" and out[("n", "t", "b")].ltime == 3 and len(out) == 3


class TestEntry:
    def test_visibility(self):
        assert e().is_visible()
        assert not e(deleted=True).is_visible(include_hidden=True)
        assert not e(hidden=True).is_visible() and e(hidden=True).is_visible(include_hidden=True)

    def test_remaining_reap(self):
        assert e(deleted=True, reap_at=10.0).remaining_reap(now=4.0) == 6.0
        assert e(deleted=True, reap_at=10.0).remaining_reap(now=11.0) == 0.0
        assert e().remaining_reap(now=0.0) == 0.0

    def test_attachment_admits(self):
        join = Attachment("a", "n", ltime=10, floor=4)
        assert join.admits(5) and not join.admits(4)
        leave = Attachment("a", "n", ltime=10, leaving=True)
        assert not leave.admits(9) and not leave.admits(11)


class TestTableStore:
    def test_put_get_remove_and_indexes(self):
        s = TableStore()
        assert s.put(e("k1", owner="a")) is None
        s.put(e("k2", owner="b"))
        s.put(e("k1", owner="b", ltime=2))
        assert s.slots_of("a") == [] and s.slots_of("b") == [("n", "t", "k1"), ("n", "t", "k2")]
        assert s.live_count("n", "t") == 2
        s.put(e("k2", owner="b", ltime=3, deleted=True))
        assert s.live_count("n", "t") == 1
        assert [x.key for x in s.entries("n", "t")] == ["k1", "k2"]
        assert s.remove(("n", "t", "k1")).key == "k1"
        assert s.remove(("n", "t", "zz")) is None and s.remove(("x", "t", "k")) is None
        assert len(s) == 1

    def test_sorted_walk_and_drop_network(self):
        s = TableStore()
        for net in ("b", "a"):
            for key in ("z", "y"):
                s.put(e(key, network=net))
        s.put(e("q", network="a", table="s"))
        assert [(x.network, x.table, x.key) for x in s.entries()] == [
            ("a", "s", "q"),
            ("a", "t", "y"),
            ("a", "t", "z"),
            ("b", "t", "y"),
            ("b", "t", "z"),
        ]
        assert [x.key for x in s.drop_network("a")] == ["q", "y", "z"]
        assert s.networks() == ["b"] and s.live_count("a", "t") == 0 and s.slots_of("a", "a") == []


class TestDigest:
    def test_digest_tracks_content_not_history(self):
        a, b = TableStore(), TableStore()
        a.put(e("k1", ltime=1))
        a.put(e("k2", ltime=2))
        a.put(e("k1", ltime=3, value=b"x"))
        b.put(e("k2", ltime=2))
        b.put(e("k1", ltime=3, value=b"x"))
        assert a.digest("n") == b.digest("n") != 0
        b.put(e("k1", ltime=3, value=b"x", hidden=True, reap_at=5.0))
        assert a.digest("n") == b.digest("n")
        b.put(e("k1", ltime=4, deleted=True))
        assert a.digest("n") != b.digest("n")
        b.remove(("n", "t", "k1"))
        b.remove(("n", "t", "k2"))
        assert b.digest("n") == 0 and a.digest("other") == 0

    def test_entry_hash_distinguishes_fields(self):
        base = e()
        variants = [e(key="k2"), e(value=b"w"), e(owner="b"), e(ltime=2), e(deleted=True), e(table="u")]
        assert len({entry_hash(x) for x in [base, *variants]}) == 7
        assert entry_hash(e(reap_at=3.0, hidden=True)) == entry_hash(base)


class TestLamport:
    def test_tick_and_witness(self):
        c = LamportClock(block=10)
        assert c.tick() == 1
        c.witness(7)
        assert c.tick() == 8
        c.witness(3)
        assert c.tick() == 9

    def test_high_water_reserved_in_blocks(self):
        c = LamportClock(block=10)
        assert c.high_water == 10 and c.raised
        c.raised = False
        for _ in range(9):
            c.tick()
        assert not c.raised
        c.tick()
        assert c.time == 10 and c.high_water == 20 and c.raised
        c.raised = False
        c.witness(55)
        assert c.high_water == 65 and c.raised

    def test_restart_from_high_water_beats_everything_issued(self):
        c = LamportClock(block=4)
        issued = [c.tick() for _ in range(11)]
        restarted = LamportClock(start=c.high_water, block=4)
        assert restarted.tick() > max(issued)

    def test_bad_start(self):
        with pytest.raises(LocalProtocolError):
            LamportClock(start=-1)
        with pytest.raises(LocalProtocolError):
            LamportClock(start=MAX_LTIME)

    def test_witness_never_overflows(self):
        c = LamportClock(block=10)
        c.witness(MAX_LTIME)
        assert c.high_water < MAX_LTIME


class TestConfig:
    def test_libnetwork_defaults(self):
        c = cfgmod.lan()
        assert c.reap_entry_interval == 1800.0
        assert c.reap_network_interval == 1825.0
        assert c.gossip_interval == 0.2 and c.gossip_nodes == 3 and c.retransmit_mult == 4
        assert c.bulk_sync_interval == 30.0 and c.max_queue_len_broadcast_on_sync == 500

    def test_presets_are_valid(self):
        for preset in (cfgmod.lan, cfgmod.wan, cfgmod.local, cfgmod.fast):
            assert preset().reap_network_interval > preset().reap_entry_interval

    @pytest.mark.parametrize(
        "change",
        [
            {"gossip_interval": 0},
            {"reap_network_interval": 1800.0},
            {"gossip_nodes": 0},
            {"packet_budget_bytes": 100},
            {"max_queue_len_broadcast_on_sync": 10_000},
            {"max_message_bytes": 1000},
            {"max_key_bytes": 0},
            {"join_sync_max_peers": -1},
            {"relay_retransmit_mult": 0},
            {"max_gossip_packets": 1},
        ],
    )
    def test_bad_config_says_what(self, change):
        with pytest.raises(ConfigError, match=next(iter(change))):
            cfgmod.lan().with_(**change)

    def test_retransmit_limit_scales_with_network_size(self):
        assert cfgmod.retransmit_limit(4, 1) == 4
        assert cfgmod.retransmit_limit(4, 9) == 4
        assert cfgmod.retransmit_limit(4, 10) == 8
        assert cfgmod.retransmit_limit(4, 1000) == 16

    def test_state_sync_period_scales_above_32(self):
        assert cfgmod.state_sync_period(30.0, 32) == 30.0
        assert cfgmod.state_sync_period(30.0, 64) == 60.0
        assert cfgmod.state_sync_period(30.0, 1000) == 30.0 * 6
