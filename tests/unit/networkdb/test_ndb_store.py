"""The NetworkDB facade on one node, with exact ``now``: CRUD, tombstones and reaping, watches, limits,
the Lamport high-water mark, cluster ids, direct requests, and the receive path's refusals."""

from __future__ import annotations

import random

import pytest

from meshnet.core.errors import LocalProtocolError
from meshnet.gossip import events as gev
from meshnet.networkdb import (
    ClusterIdSet,
    EntryCreated,
    EntryDeleted,
    EntryUpdated,
    HighWaterRaised,
    MessageRejected,
    NetworkDB,
    NetworkSynced,
    PeerRefused,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    codec,
    fast,
)
from meshnet.networkdb.messages import Envelope, Request, Response, TableEvents, WireEntry

PEER = ("10.0.0.2", 7946)


def mk(name="a", *, now=0.0, **changes):
    cfg = fast().with_(**changes) if changes else fast()
    return NetworkDB(cfg, name=name, rng=random.Random(7), now=now)


def drain(db):
    out = []
    while (ev := db.next_event()) is not None:
        out.append(ev)
    return out


def watch_events(db):
    return [e for e in drain(db) if isinstance(e, EntryCreated | EntryUpdated | EntryDeleted)]


def table_msg(sender, network, *entries, cluster_id=""):
    return codec.encode(Envelope(sender, cluster_id, TableEvents(network, tuple(entries))))


class TestConstruction:
    def test_first_events_and_global_network(self):
        db = mk()
        assert drain(db) == [NetworkSynced("", (), ()), HighWaterRaised(1024)]
        assert db.networks() == [""]
        (b,) = db.broadcasts_to_send()
        att = codec.decode(b).body.attachments[0]
        assert (att.node, att.network, att.leaving) == ("a", "", False)

    def test_no_global_join_when_disabled(self):
        db = mk(join_global=False)
        assert db.networks() == [] and db.broadcasts_to_send() == []

    def test_bad_name(self):
        with pytest.raises(LocalProtocolError):
            NetworkDB(fast(), name="", rng=random.Random(1), now=0.0)
        with pytest.raises(LocalProtocolError):
            NetworkDB(fast(), name="x" * 129, rng=random.Random(1), now=0.0)

    def test_idle_node_has_only_periodic_deadlines(self):
        db = mk()
        assert 0.0 <= db.next_deadline() <= fast().bulk_sync_interval


class TestCrud:
    def test_create_get_update_delete(self):
        db = mk()
        db.join_network("n", now=1.0)
        e1 = db.create_entry("t", "n", "k", b"v1", now=1.0)
        assert db.get_entry("t", "n", "k") == e1 and e1.owner == "a"
        with pytest.raises(LocalProtocolError, match="exists"):
            db.create_entry("t", "n", "k", b"again", now=1.0)
        e2 = db.update_entry("t", "n", "k", b"v2", now=2.0)
        assert e2.ltime > e1.ltime and db.get_entry("t", "n", "k").value == b"v2"
        tomb = db.delete_entry("t", "n", "k", now=3.0)
        assert tomb.deleted and tomb.value == b"v2" and tomb.reap_at == 3.0 + 300.0
        assert db.get_entry("t", "n", "k") is None
        assert db.walk_table("t", "n") == []
        assert db.walk_table("t", "n", include_deleted=True) == [tomb]
        with pytest.raises(LocalProtocolError, match="no entry"):
            db.update_entry("t", "n", "k", b"x", now=3.0)
        with pytest.raises(LocalProtocolError, match="no entry"):
            db.delete_entry("t", "n", "k", now=3.0)
        e3 = db.create_entry("t", "n", "k", b"v3", now=4.0)
        assert e3.ltime > tomb.ltime and db.get_entry("t", "n", "k") == e3

    def test_put_creates_or_updates(self):
        db = mk()
        db.put_entry("t", "", "k", b"1", now=0.0)
        db.put_entry("t", "", "k", b"2", now=0.0)
        assert db.get_entry("t", "", "k").value == b"2"

    def test_walk_is_sorted_and_per_network(self):
        db = mk()
        db.join_network("n", now=0.0)
        for key in ("b", "a", "c"):
            db.create_entry("t", "n", key, b"", now=0.0)
        db.create_entry("t", "", "z", b"", now=0.0)
        db.create_entry("other", "n", "q", b"", now=0.0)
        assert [e.key for e in db.walk_table("t", "n")] == ["a", "b", "c"]
        assert [(e.network, e.key) for e in db.walk_table("t")] == [
            ("", "z"),
            ("n", "a"),
            ("n", "b"),
            ("n", "c"),
        ]

    def test_write_to_unjoined_network_fails(self):
        db = mk()
        with pytest.raises(LocalProtocolError, match="join network 'x'"):
            db.create_entry("t", "x", "k", b"", now=0.0)

    @pytest.mark.parametrize(
        "args, match",
        [
            (("", "", "k", b""), "table must not be empty"),
            (("t" * 129, "", "k", b""), "table is 129 bytes"),
            (("t", "", "", b""), "key must not be empty"),
            (("t", "", "k" * 513, b""), "key is 513 bytes"),
            (("t", "", "é" * 300, b""), "key is 600 bytes"),
            (("t", "", "k", "str"), "value must be bytes"),
            (("t", "", "k", b"x" * (64 * 1024 + 1)), "value is 65537 bytes"),
            (("t", "", "\ud800", b""), "UTF-8"),
            ((1, "", "k", b""), "table must be a str"),
        ],
    )
    def test_size_and_type_limits_change_nothing(self, args, match):
        db = mk()
        before = db.ltime
        with pytest.raises(LocalProtocolError, match=match):
            db.create_entry(*args, now=0.0)
        assert db.ltime == before and db.walk_table("t", include_deleted=True) == []

    def test_max_table_entries(self):
        db = mk(max_table_entries=2)
        db.create_entry("t", "", "a", b"", now=0.0)
        db.create_entry("t", "", "b", b"", now=0.0)
        with pytest.raises(LocalProtocolError, match="max_table_entries"):
            db.create_entry("t", "", "c", b"", now=0.0)
        db.update_entry("t", "", "a", b"ok", now=0.0)
        db.delete_entry("t", "", "a", now=0.0)
        db.create_entry("t", "", "c", b"", now=0.0)
        db.create_entry("u", "", "c", b"", now=0.0)

    def test_join_is_idempotent_and_leave_requires_join(self):
        db = mk()
        db.join_network("n", now=0.0)
        ltime = db.ltime
        db.join_network("n", now=0.0)
        assert db.ltime == ltime
        with pytest.raises(LocalProtocolError, match="not joined"):
            db.leave_network("zz", now=0.0)


class TestTombstonesAndReaping:
    def test_tombstone_reaped_exactly_at_reap_interval(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        db.create_entry("t", "n", "k", b"v", now=0.0)
        db.delete_entry("t", "n", "k", now=10.0)
        db.handle_timer(now=309.999)
        assert db.walk_table("t", "n", include_deleted=True) != []
        db.handle_timer(now=310.0)
        assert db.walk_table("t", "n", include_deleted=True) == []
        assert db.stats()["tombstones_reaped"] == 1

    def test_tombstone_recreated_is_not_reaped(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        db.create_entry("t", "n", "k", b"v", now=0.0)
        db.delete_entry("t", "n", "k", now=1.0)
        db.create_entry("t", "n", "k", b"w", now=2.0)
        db.handle_timer(now=1000.0)
        assert db.get_entry("t", "n", "k").value == b"w"

    def test_remote_tombstone_keeps_remaining_reap_time(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        tomb = WireEntry("t", "k", b"v", "b", 5, deleted=True, reap_in_ms=20_000)
        db.receive(PEER, table_msg("b", "n", tomb), now=100.0)
        (e,) = db.walk_table("t", "n", include_deleted=True)
        assert e.deleted and e.reap_at == 120.0
        db.handle_timer(now=120.0)
        assert db.walk_table("t", "n", include_deleted=True) == []

    def test_remote_reap_time_is_clamped(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        tomb = WireEntry("t", "k", b"v", "b", 5, deleted=True, reap_in_ms=10**12)
        db.receive(PEER, table_msg("b", "n", tomb), now=0.0)
        assert db.walk_table("t", "n", include_deleted=True)[0].reap_at == 300.0

    def test_tombstone_not_resurrected_by_older_create(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5, True, False, 60_000)), now=0.0)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 4)), now=0.0)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5)), now=0.0)
        assert db.get_entry("t", "n", "k") is None and db.stats()["stale_entries"] == 2

    def test_tombstone_on_wire_carries_remaining_time(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        db.node_alive("b", PEER, incarnation=1, now=0.0)
        db.receive(PEER, codec.encode(Envelope("b", "", _att("b", "n"))), now=0.0)
        db.create_entry("t", "n", "k", b"v", now=0.0)
        db.delete_entry("t", "n", "k", now=0.0)
        db.messages_to_send()
        db.handle_timer(now=db.next_deadline())
        sent = [codec.decode(m.payload).body for m in db.messages_to_send()]
        tables = [b for b in sent if isinstance(b, TableEvents)]
        # encoded when queued (like libnetwork's TableEvent): the remaining time at the delete
        assert tables and tables[0].entries[0].deleted and tables[0].entries[0].reap_in_ms == 300_000


def _att(node, network, ltime=1, leaving=False):
    from meshnet.networkdb.messages import AttachmentEvents, WireAttachment

    return AttachmentEvents((WireAttachment(node, network, ltime, leaving),))


class TestWatch:
    def setup_db(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        db.join_network("m", now=0.0)
        db.create_entry("t", "n", "k1", b"1", now=0.0)
        db.create_entry("t", "m", "k2", b"2", now=0.0)
        db.create_entry("u", "n", "k3", b"3", now=0.0)
        drain(db)
        return db

    def test_replay_on_subscribe_in_sorted_order(self):
        db = self.setup_db()
        wid = db.watch()
        assert [(e.watch_id, e.network, e.table, e.key) for e in watch_events(db)] == [
            (wid, "m", "t", "k2"),
            (wid, "n", "t", "k1"),
            (wid, "n", "u", "k3"),
        ]

    @pytest.mark.parametrize(
        "flt, keys",
        [
            ({"table": "t"}, ["k2", "k1"]),
            ({"network": "n"}, ["k1", "k3"]),
            ({"table": "t", "network": "n"}, ["k1"]),
            ({"key": "k3"}, ["k3"]),
            ({"network": ""}, []),
        ],
    )
    def test_filters(self, flt, keys):
        db = self.setup_db()
        db.watch(**flt)
        assert [e.key for e in watch_events(db)] == keys
        db.create_entry("t", "n", "k4", b"4", now=1.0)
        later = [e.key for e in watch_events(db)]
        assert later == (
            ["k4"]
            if flt.get("table", "t") == "t" and flt.get("network", "n") == "n" and "key" not in flt
            else []
        )

    def test_create_update_delete_events(self):
        db = self.setup_db()
        wid = db.watch(table="t", network="n")
        drain(db)
        db.update_entry("t", "n", "k1", b"new", now=1.0)
        db.delete_entry("t", "n", "k1", now=2.0)
        db.create_entry("t", "n", "k1", b"again", now=3.0)
        evs = watch_events(db)
        assert [type(e) for e in evs] == [EntryUpdated, EntryDeleted, EntryCreated]
        assert evs[0].value == b"new" and evs[0].prev_value == b"1" and evs[0].watch_id == wid
        assert evs[1].value == b"new" and evs[2].value == b"again"

    def test_two_watches_each_get_their_event(self):
        db = self.setup_db()
        w1, w2 = db.watch(table="t"), db.watch(network="n")
        drain(db)
        db.update_entry("t", "n", "k1", b"x", now=1.0)
        assert sorted(e.watch_id for e in watch_events(db)) == [w1, w2]

    def test_unwatch_drops_queued_and_future_events(self):
        db = self.setup_db()
        wid = db.watch()
        db.unwatch(wid)
        db.update_entry("t", "n", "k1", b"x", now=1.0)
        assert watch_events(db) == []


class TestClockRestartSafety:
    def test_restart_from_persisted_high_water_beats_old_writes(self):
        db = mk(high_water_block=8)
        hw = None
        for i in range(20):
            db.put_entry("t", "", f"k{i}", b"", now=0.0)
            for ev in drain(db):
                if isinstance(ev, HighWaterRaised):
                    hw = ev.high_water
        assert hw == db.state_high_water and hw >= db.ltime
        old_max = db.ltime
        again = NetworkDB(fast(), name="a", rng=random.Random(1), now=0.0, high_water=hw)
        assert again.create_entry("t", "", "new", b"", now=0.0).ltime > old_max

    def test_witness_moves_clock_and_high_water(self):
        db = mk(join_global=False, high_water_block=10)
        db.join_network("n", now=0.0)
        drain(db)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"", "b", 500)), now=0.0)
        assert db.ltime == 500 and HighWaterRaised(510) in drain(db)
        assert db.create_entry("t", "n", "k2", b"", now=0.0).ltime == 501


class TestClusterId:
    def test_found_cluster(self):
        db = mk()
        drain(db)
        cid = db.found_cluster(now=0.0)
        assert len(cid) == 32 and db.cluster_id == cid and drain(db) == [ClusterIdSet(cid)]
        assert db.found_cluster(now=0.0) == cid and drain(db) == []

    def test_adopt_first_cluster_id_seen(self):
        db = mk(join_global=False)
        db.join_network("n", now=0.0)
        drain(db)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"", "b", 1), cluster_id="c1"), now=0.0)
        assert db.cluster_id == "c1" and ClusterIdSet("c1") in drain(db)
        assert db.get_entry("t", "n", "k") is not None

    def test_peer_of_other_cluster_refused(self):
        db = NetworkDB(fast(), name="a", rng=random.Random(1), now=0.0, cluster_id="mine")
        db.join_network("n", now=0.0)
        drain(db)
        for _ in range(2):
            db.receive(
                PEER, table_msg("b", "n", WireEntry("t", "k", b"", "b", 1), cluster_id="theirs"), now=0.0
            )
        assert drain(db) == [PeerRefused("b", "theirs")]
        assert db.get_entry("t", "n", "k") is None and db.stats()["refused_foreign_cluster"] == 2
        assert db.ltime < 5

    def test_peer_without_cluster_id_is_accepted(self):
        db = NetworkDB(fast(), name="a", rng=random.Random(1), now=0.0, cluster_id="mine")
        db.join_network("n", now=0.0)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"", "b", 1)), now=0.0)
        assert db.get_entry("t", "n", "k") is not None

    def test_own_messages_carry_cluster_id(self):
        db = NetworkDB(fast(), name="a", rng=random.Random(1), now=0.0, cluster_id="mine")
        assert codec.decode(db.broadcasts_to_send()[0]).cluster_id == "mine"


class TestRequests:
    def test_request_response_roundtrip(self):
        a = mk("a")
        b = mk("b")
        a.node_alive("b", PEER, incarnation=1, now=0.0)
        a.messages_to_send()
        rid = a.request("b", b"ping", now=0.0)
        (m,) = a.messages_to_send()
        assert (m.node, m.addr, m.reliable) == ("b", PEER, False)
        b.receive(("10.0.0.1", 7946), m.payload, now=0.1)
        (req,) = [e for e in drain(b) if isinstance(e, RequestReceived)]
        assert req == RequestReceived("a", rid, b"ping")
        b.respond("a", req.request_id, b"pong", now=0.1, reliable=True)
        (r,) = b.messages_to_send()
        assert r.addr == ("10.0.0.1", 7946) and r.reliable
        a.receive(PEER, r.payload, now=0.2)
        assert ResponseReceived("b", rid, b"pong") in drain(a)
        a.handle_timer(now=10.0)
        assert not any(isinstance(e, RequestTimedOut) for e in drain(a))

    def test_timeout_then_late_response_dropped(self):
        a = mk("a")
        a.node_alive("b", PEER, incarnation=1, now=0.0)
        rid = a.request("b", b"ping", now=0.0)
        drain(a)
        a.handle_timer(now=0.499)
        assert drain(a) == []
        a.handle_timer(now=0.5)
        assert drain(a) == [RequestTimedOut("b", rid)]
        a.receive(PEER, codec.encode(Envelope("b", "", Response(rid, b"late"))), now=0.6)
        assert drain(a) == [] and a.stats()["late_responses"] == 1

    def test_response_from_wrong_node_dropped(self):
        a = mk("a")
        a.node_alive("b", PEER, incarnation=1, now=0.0)
        rid = a.request("b", b"ping", now=0.0)
        drain(a)
        a.receive(("10.0.0.3", 7946), codec.encode(Envelope("c", "", Response(rid, b"x"))), now=0.1)
        assert drain(a) == []

    def test_request_to_unknown_node_or_too_big(self):
        a = mk("a")
        with pytest.raises(LocalProtocolError, match="no address"):
            a.request("zz", b"", now=0.0)
        a.node_alive("b", PEER, incarnation=1, now=0.0)
        with pytest.raises(LocalProtocolError, match="exceeds"):
            a.request("b", b"x" * (64 * 1024 + 1), now=0.0)


class TestReceivePath:
    def test_foreign_payload_ignored(self):
        db = mk()
        drain(db)
        db.receive(PEER, b"\x03serf-user-event", now=0.0)
        assert drain(db) == [] and db.stats()["foreign_payloads"] == 1

    def test_garbage_rejected_never_raised(self):
        db = mk()
        drain(db)
        db.receive(PEER, b"\x6e\xff\xff", now=0.0)
        (ev,) = drain(db)
        assert isinstance(ev, MessageRejected) and ev.src == PEER and db.stats()["messages_rejected"] == 1

    def test_message_claiming_our_name_rejected(self):
        db = mk()
        drain(db)
        db.receive(PEER, table_msg("a", "", WireEntry("t", "k", b"", "x", 1)), now=0.0)
        assert isinstance(drain(db)[0], MessageRejected) and db.get_entry("t", "", "k") is None

    def test_entries_of_unjoined_network_dropped(self):
        db = mk()
        db.receive(PEER, table_msg("b", "zz", WireEntry("t", "k", b"", "b", 1)), now=0.0)
        assert db.walk_table("t", "zz", include_deleted=True) == [] and db.stats()["dropped_not_joined"] == 1

    def test_request_via_gossip_event(self):
        db = mk()
        ev = gev.UserMessageReceived(PEER, codec.encode(Envelope("b", "", Request(5, b"q"))))
        db.handle_gossip_event(ev, now=0.0)
        assert RequestReceived("b", 5, b"q") in drain(db)
        db.handle_gossip_event(gev.JoinFailed(PEER, "x"), now=0.0)

    def test_member_events_dispatch(self):
        db = mk()
        m = gev.Member("b", "10.0.0.2", 7946, b"", 3, "alive", b"", 0.0)
        db.handle_gossip_event(gev.MemberJoined(m), now=0.0)
        assert db.node_state("b") == "alive"
        db.handle_gossip_event(gev.MemberFailed(m, "c"), now=0.0)
        assert db.node_state("b") == "failed"
        db.handle_gossip_event(gev.MemberJoined(m.__class__(**{**_fields(m), "incarnation": 4})), now=0.0)
        assert db.node_state("b") == "alive"
        db.handle_gossip_event(gev.MemberLeft(m), now=0.0)
        assert db.node_state("b") == "left"
        db.handle_gossip_event(gev.MemberReaped("b"), now=0.0)
        assert db.node_state("b") == "left"
        db.handle_timer(now=fast().node_forget_interval + 1)
        assert db.node_state("b") is None


def _fields(m):
    return {f: getattr(m, f) for f in m.__slots__}


class TestThroughputPaths:
    """The paths that carry 1,000 writes/s: duplicate copies skipped before decoding, rebroadcasts
    sent fewer times than local writes, and a long queue drained with more datagrams per interval."""

    def peered(self, **changes):
        db = mk(join_global=False, **changes)
        db.join_network("n", now=0.0)
        db.node_alive("b", PEER, incarnation=1, now=0.0)
        db.receive(PEER, codec.encode(Envelope("b", "", _att("b", "n"))), now=0.0)
        drain(db)
        db.messages_to_send()
        return db

    def test_duplicate_and_stale_copies_are_skipped_before_decoding(self):
        db = self.peered()
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5)), now=0.0)
        assert [type(e) for e in watch_events(db)] == []  # no watch: just check the store
        assert db.get_entry("t", "n", "k").ltime == 5
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5)), now=0.0)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"old", "b", 3)), now=0.0)
        st = db.stats()
        assert st["duplicate_entries"] == 1 and st["stale_entries"] == 1
        # a skipped copy is not validated either: garbage in an entry the node holds newer is ignored
        bad = codec._header(codec.Kind.TABLE_EVENTS, "b", "") + codec._pack(
            ["n", [["t", "k", 1, "b", 2, 9, -1]]]
        )
        db.receive(PEER, bad, now=0.0)
        assert db.stats()["stale_entries"] == 2 and db.stats().get("messages_rejected", 0) == 0
        # ... while the same garbage for an unknown slot is rejected as before
        bad2 = codec._header(codec.Kind.TABLE_EVENTS, "b", "") + codec._pack(
            ["n", [["t", "new", 1, "b", 2, 9, -1]]]
        )
        db.receive(PEER, bad2, now=0.0)
        assert db.stats()["messages_rejected"] == 1

    def test_same_version_tombstone_and_tie_take_the_full_merge(self):
        db = self.peered()
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5)), now=0.0)
        # same (ltime, owner) but a tombstone: wins the tie, not a duplicate
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5, True, False, 60_000)), now=0.0)
        assert db.get_entry("t", "n", "k") is None
        assert db.walk_table("t", "n", include_deleted=True)[0].reap_at == 60.0
        # a same-version tombstone with an earlier reap time still lowers it (full path, not skipped)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5, True, False, 10_000)), now=0.0)
        assert db.walk_table("t", "n", include_deleted=True)[0].reap_at == 10.0
        # same ltime, other owner: the tie-break by owner decides, so it is merged
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k2", b"v", "b", 7)), now=0.0)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k2", b"w", "c", 7)), now=0.0)
        assert db.get_entry("t", "n", "k2").owner == "c"
        assert db.stats().get("duplicate_entries", 0) == 0

    def test_rebroadcasts_are_sent_relay_limit_times(self):
        db = self.peered(retransmit_mult=3, relay_retransmit_mult=1)
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "r", b"v", "b", 5)), now=0.0)
        db.create_entry("t", "n", "mine", b"v", now=0.0)
        counts = {"r": 0, "mine": 0}
        for _ in range(10):
            if db.next_deadline() is None:
                break
            db.handle_timer(now=db.next_deadline())
            for m in db.messages_to_send():
                body = codec.decode(m.payload).body
                if isinstance(body, TableEvents):
                    for w in body.entries:
                        counts[w.key] += 1
        # 2 nodes in the network: ceil(log10(3)) = 1, so 3 local transmits and 1 relay transmit
        assert counts == {"r": 1, "mine": 3}

    def test_long_queue_gets_more_datagrams_per_interval_within_the_bound(self):
        db = self.peered(gossip_packets=2, max_gossip_packets=5, retransmit_mult=1)
        for i in range(200):
            db.create_entry("t", "n", f"k{i:03d}", b"x" * 100, now=0.0)
        db.messages_to_send()
        db.handle_timer(now=db.next_deadline())
        sent = db.messages_to_send()
        assert len(sent) == 5  # one peer, 5 datagrams (not gossip_packets=2), capped at 5
        assert all(len(m.payload) <= db.config.packet_budget_bytes for m in sent)
        left = db.stats("n")["queue_len"]
        assert 0 < left < 200
        db.handle_timer(now=db.next_deadline())
        assert len(db.messages_to_send()) == 5
        # a short queue: gossip_packets at most
        small = self.peered(gossip_packets=2, max_gossip_packets=5, retransmit_mult=1)
        small.create_entry("t", "n", "only", b"x", now=0.0)
        small.messages_to_send()
        small.handle_timer(now=small.next_deadline())
        assert len(small.messages_to_send()) == 1

    def test_put_entries_is_all_or_nothing(self):
        db = mk(join_global=False, max_table_entries=3)
        db.join_network("n", now=0.0)
        drain(db)
        got = db.put_entries("t", "n", [("a", b"1"), ("b", b"2")], now=0.0)
        assert [(e.key, e.owner) for e in got] == [("a", "a"), ("b", "a")] and got[0].ltime < got[1].ltime
        before = db.walk_table("t", "n")
        for bad in ([("c", b"3"), ("c", b"4")], [("c", b"3"), ("", b"4")], [("c", b"3"), ("d", b"4")]):
            with pytest.raises(LocalProtocolError):
                db.put_entries("t", "n", bad, now=0.0)
            assert db.walk_table("t", "n") == before
        assert [e.key for e in db.put_entries("t", "n", [("a", b"9"), ("c", b"3")], now=0.0)] == ["a", "c"]

    def test_bulk_sync_entries_already_held_are_skipped_too(self):
        from meshnet.networkdb.messages import SyncMode

        db = self.peered()
        db.receive(PEER, table_msg("b", "n", WireEntry("t", "k", b"v", "b", 5)), now=0.0)
        entries = [WireEntry("t", "k", b"v", "b", 5), WireEntry("t", "k2", b"w", "b", 6)]
        (payload,) = codec.encode_bulk_sync(
            "b", "", sync_id=9, mode=SyncMode.PUSH, networks=("n",), attachments=(),
            want=("n",), sections=[("n", entries)], max_bytes=1 << 20,
        )  # fmt: skip
        db.receive(PEER, payload, now=0.0)
        assert db.stats()["duplicate_entries"] == 1
        assert db.get_entry("t", "n", "k2").value == b"w"
