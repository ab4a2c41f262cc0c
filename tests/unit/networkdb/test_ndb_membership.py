"""Node failure, return, leave and reap; attachments; owner authority. Small clusters, exact time."""

from __future__ import annotations

from meshnet.networkdb import EntryCreated, EntryDeleted, EntryUpdated, fast
from meshnet.networkdb.messages import AttachmentEvents, Envelope, TableEvents, WireAttachment, WireEntry
from tests.unit.networkdb.ndb_harness import Cluster


def joined(n=3, network="net", **kw):
    c = Cluster(n, **kw)
    for name in c.names:
        c.call(name, "join_network", network)
    c.run_for(1.0)
    return c


def watch_evs(c, name):
    return [e for e in c.take_events(name) if isinstance(e, EntryCreated | EntryUpdated | EntryDeleted)]


class TestFailureHides:
    def test_failed_owner_entries_hidden_not_deleted(self):
        c = joined()
        c.call("n0", "create_entry", "svc", "net", "web", b"10.0.0.5")
        c.run_for(1.0)
        wid = c.call("n1", "watch", table="svc")
        wid_all = c.call("n1", "watch", table="svc", include_hidden=True)
        c.take_events("n1")
        c.crash("n0")
        evs = watch_evs(c, "n1")
        assert [(type(e), e.watch_id) for e in evs] == [(EntryDeleted, wid)]
        assert evs[0].value == b"10.0.0.5"
        db = c.db("n1")
        assert db.get_entry("svc", "net", "web") is None
        hidden = db.get_entry("svc", "net", "web", include_hidden=True)
        assert hidden.hidden and hidden.value == b"10.0.0.5"
        assert [e.key for e in db.walk_table("svc", "net", include_hidden=True)] == ["web"]
        assert db.walk_table("svc", "net") == []
        assert db.stats("net")["hidden"] == 1 and db.peers("net") == ["n2"]
        assert wid_all not in [e.watch_id for e in evs]

    def test_return_with_higher_incarnation_reveals(self):
        c = joined()
        c.call("n0", "create_entry", "svc", "net", "web", b"v1")
        c.run_for(1.0)
        c.partition(["n0"], ["n1", "n2"])
        c.call("n0", "update_entry", "svc", "net", "web", b"v2")
        c.run_for(1.0)
        c.call("n1", "watch", table="svc")
        c.take_events("n1")
        c.heal()
        evs = watch_evs(c, "n1")
        assert [type(e) for e in evs] == [EntryCreated] and evs[0].value == b"v1"
        c.run_for(fast().bulk_sync_interval * 3)
        evs = watch_evs(c, "n1")
        assert [(type(e), e.value) for e in evs] == [(EntryUpdated, b"v2")]

    def test_stale_alive_verdict_is_ignored(self):
        c = joined(2)
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(1.0)
        db = c.db("n1")
        db.node_failed("n0", incarnation=5, now=c.now)
        db.node_alive("n0", c.slots["n0"].addr, incarnation=4, now=c.now)
        assert db.node_state("n0") == "failed" and db.get_entry("t", "net", "k") is None
        assert db.stats()["stale_member_events"] == 1
        db.node_alive("n0", c.slots["n0"].addr, incarnation=6, now=c.now)
        assert db.get_entry("t", "net", "k").value == b"v"

    def test_stale_failed_verdict_is_ignored(self):
        c = joined(2)
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(1.0)
        db = c.db("n1")
        db.node_alive("n0", c.slots["n0"].addr, incarnation=5, now=c.now)
        db.node_failed("n0", incarnation=3, now=c.now)
        assert db.node_state("n0") == "alive" and db.get_entry("t", "net", "k") is not None

    def test_hidden_entries_travel_flagged_in_bulk_sync(self):
        c = joined(3)
        c.call("n0", "create_entry", "ipam", "net", "block@n0", b"held")
        c.run_for(1.0)
        c.crash("n0")
        # a newcomer that never heard of n0 learns the entry from n1, hidden
        db = c.db("n2")
        db.leave_network("net", now=c.now)
        c.run_for(0.1)
        db.node_left("n0", now=c.now)  # forget everything about n0 ...
        db._nodes.forget("n0")  # ... as a node that never saw it would
        c.call("n2", "join_network", "net")
        c.run_for(2.0)
        e = db.get_entry("ipam", "net", "block@n0", include_hidden=True)
        assert e is not None and e.hidden and db.get_entry("ipam", "net", "block@n0") is None

    def test_hidden_flag_of_sender_ignored_when_owner_known_alive(self):
        c = Cluster(2)
        db = c.db("n1")
        c.call("n1", "join_network", "net")
        att = AttachmentEvents((WireAttachment("zz", "net", 1),))
        db.receive(c.slots["n0"].addr, _enc("n0", att), now=0.0)
        w = WireEntry("t", "k", b"v", "zz", 2, hidden=True)
        db.receive(c.slots["n0"].addr, _enc("n0", TableEvents("net", (w,))), now=0.0)
        assert db.get_entry("t", "net", "k") is None
        db.node_alive("zz", ("10.9.9.9", 7946), incarnation=1, now=0.0)
        assert db.get_entry("t", "net", "k") is not None


def _enc(sender, body):
    from meshnet.networkdb import codec

    return codec.encode(Envelope(sender, "", body))


class TestLeaveAndReap:
    def test_graceful_leave_removes_for_good(self):
        c = joined()
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(1.0)
        c.call("n1", "watch", table="t")
        c.take_events("n1")
        c.leave("n0")
        evs = watch_evs(c, "n1")
        assert [type(e) for e in evs] == [EntryDeleted]
        db = c.db("n1")
        assert db.get_entry("t", "net", "k", include_hidden=True) is None
        assert db.attachments("net") == [a for a in db.attachments("net") if a.node != "n0"]
        # a stale copy arriving later is refused
        w = WireEntry("t", "k", b"v", "n0", 2)
        db.receive(c.slots["n2"].addr, _enc("n2", TableEvents("net", (w,))), now=c.now)
        assert db.get_entry("t", "net", "k", include_hidden=True) is None
        assert db.stats()["dropped_departed_owner"] == 1

    def test_reap_of_failed_node_removes_hidden_entries(self):
        c = joined()
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(1.0)
        c.crash("n0")
        c.call("n1", "watch", table="t", include_hidden=True)
        c.take_events("n1")
        c.call("n1", "node_left", "n0")  # MemberReaped
        evs = watch_evs(c, "n1")
        assert [type(e) for e in evs] == [EntryDeleted]
        assert c.db("n1").get_entry("t", "net", "k", include_hidden=True) is None

    def test_departed_node_forgotten_then_may_return(self):
        c = joined(2)
        db = c.db("n1")
        db.node_left("n0", now=c.now)
        c.run_for(fast().node_forget_interval - 1)
        assert db.node_state("n0") == "left"
        c.run_for(2)
        assert db.node_state("n0") is None

    def test_left_node_returning_is_accepted(self):
        c = joined(2)
        db = c.db("n1")
        db.node_left("n0", now=c.now)
        db.node_alive("n0", c.slots["n0"].addr, incarnation=9, now=c.now)
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(fast().bulk_sync_interval * 3)
        assert db.get_entry("t", "net", "k") is not None


class TestAttachments:
    def test_leave_network_removes_entries_at_peers_and_locally(self):
        c = joined()
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.call("n1", "create_entry", "t", "net", "j", b"w")
        c.run_for(1.0)
        c.call("n2", "watch", network="net")
        c.take_events("n2")
        c.call("n0", "leave_network", "net")
        assert c.db("n0").walk_table("t", "net", include_deleted=True) == []
        c.run_for(0.1)
        assert [e.key for e in watch_evs(c, "n2")] == ["k"]
        assert set(c.view("n2", "net")) == {("t", "j")}
        assert c.db("n2").peers("net") == ["n1"]
        # a stale gossip copy of n0's entry is refused by the leave record
        w = WireEntry("t", "k", b"v", "n0", 3)
        c.db("n2").receive(c.slots["n1"].addr, _enc("n1", TableEvents("net", (w,))), now=c.now)
        assert ("t", "k") not in c.view("n2", "net")

    def test_rejoin_refuses_previous_epoch(self):
        c = joined(2)
        old = c.call("n0", "create_entry", "t", "net", "k", b"old")
        c.run_for(1.0)
        c.call("n0", "leave_network", "net")
        c.call("n0", "join_network", "net")
        c.run_for(1.0)
        own = c.db("n1").attachments("net")
        assert [(a.node, a.leaving, a.floor > old.ltime) for a in own if a.node == "n0"] == [
            ("n0", False, True)
        ]
        w = WireEntry("t", "k", b"old", "n0", old.ltime)
        c.db("n1").receive(c.slots["n0"].addr, _enc("n0", TableEvents("net", (w,))), now=c.now)
        assert c.db("n1").get_entry("t", "net", "k") is None
        assert c.db("n1").stats()["dropped_detached_owner"] >= 1

    def test_no_entries_of_networks_not_joined(self):
        c = Cluster(2)
        c.call("n0", "join_network", "a")
        c.call("n0", "create_entry", "t", "a", "k", b"v")
        c.run_for(5.0)
        assert c.db("n1").walk_table("t", include_deleted=True, include_hidden=True) == []
        assert [a.node for a in c.db("n1").attachments("a")] == ["n0"]

    def test_attachment_broadcast_missed_recovered_by_state_sync(self):
        c = Cluster(3)
        c.call("n0", "join_network", "a")
        c.db("n0").broadcasts_to_send()
        c.run_for(fast().state_sync_interval * 4)
        assert all([a.node for a in c.db(n).attachments("a")] == ["n0"] for n in c.names)


class TestOwnerAuthority:
    def test_restart_without_state_deletes_own_entries_cluster_wide(self):
        c = joined()
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(1.0)
        c.crash("n0")
        c.restart("n0", state=False)
        c.call("n0", "join_network", "net")
        c.run_for(fast().bulk_sync_interval * 4)
        for n in c.names:
            assert c.view(n, "net", include_hidden=True) == {}, n
        assert c.db("n0").stats()["own_entries_reasserted"] >= 1

    def test_restart_without_state_leaves_networks_it_did_not_rejoin(self):
        c = joined()
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(1.0)
        c.crash("n0")
        c.restart("n0", state=False)
        c.run_for(fast().state_sync_interval * 4)
        for n in ("n1", "n2"):
            assert c.view(n, "net", include_hidden=True) == {}
            assert c.db(n).peers("net") == [p for p in ("n1", "n2") if p != n]

    def test_restart_with_state_reasserts_its_entries(self):
        c = joined()
        c.call("n0", "create_entry", "t", "net", "k", b"v")
        c.run_for(1.0)
        c.call("n1", "watch", table="t")
        c.take_events("n1")
        c.crash("n0")
        c.restart("n0", state=True)
        c.run_for(fast().bulk_sync_interval * 4)
        evs = watch_evs(c, "n1")
        assert [type(e) for e in evs] == [EntryDeleted, EntryCreated]
        for n in c.names:
            assert c.view(n, "net") == {("t", "k"): (b"v", "n0")}

    def test_writes_after_restart_without_high_water_still_win(self):
        c = joined(2)
        for i in range(50):
            c.call("n0", "put_entry", "t", "net", "k", f"v{i}".encode())
        c.run_for(1.0)
        c.crash("n0")
        c.restart("n0", state=False)
        c.call("n0", "join_network", "net")
        c.call("n0", "put_entry", "t", "net", "k", b"fresh")
        c.run_for(fast().bulk_sync_interval * 4)
        for n in c.names:
            assert c.view(n, "net") == {("t", "k"): (b"fresh", "n0")}, n
