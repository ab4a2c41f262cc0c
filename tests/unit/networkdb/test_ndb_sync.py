"""Gossip batches, bulk and state syncs, push-pull state, timeouts and retries, reaping of leave records."""

from __future__ import annotations

import random

from meshnet.networkdb import NetworkDB, NetworkSynced, codec, fast
from meshnet.networkdb.messages import BulkSync, StateSync, SyncMode, TableEvents
from tests.unit.networkdb.ndb_harness import Cluster


def bodies(msgs):
    return [(m, codec.decode(m.payload).body) for m in msgs]


def test_local_write_goes_to_at_most_gossip_nodes_peers_in_one_datagram():
    c = Cluster(6, seed=1)
    for n in c.names:
        c.call(n, "join_network", "net")
    c.run_for(5.0)
    db = c.db("n0")
    db.messages_to_send()
    db.create_entry("t", "net", "k", b"v", now=c.now)
    db.handle_timer(now=db.next_deadline())
    sent = [(m, b) for m, b in bodies(db.messages_to_send()) if isinstance(b, TableEvents)]
    assert 1 <= len(sent) <= 3
    assert all(not m.reliable and len(m.payload) <= c.config.packet_budget_bytes for m, _ in sent)
    assert len({m.node for m, _ in sent}) == len(sent)
    assert all(b.entries[0].key == "k" for _, b in sent)


def test_entry_larger_than_a_datagram_goes_reliably():
    c = Cluster(3, seed=2)
    for n in c.names:
        c.call(n, "join_network", "net")
    c.run_for(5.0)
    db = c.db("n0")
    db.messages_to_send()
    db.create_entry("t", "net", "big", b"x" * 5000, now=c.now)
    db.handle_timer(now=db.next_deadline())
    sent = [(m, b) for m, b in bodies(db.messages_to_send()) if isinstance(b, TableEvents)]
    assert sent and all(m.reliable for m, _ in sent)
    c.run_for(1.0)
    assert all(c.db(n).get_entry("t", "net", "big") is not None for n in c.names)


def test_idle_node_has_no_gossip_deadline():
    c = Cluster(2, seed=3)
    c.run_for(30.0)
    db = c.db("n0")
    assert "gossip" not in db._timers


def test_bulk_sync_of_equal_tables_is_two_small_messages():
    c = Cluster(2, seed=4)
    for n in c.names:
        c.call(n, "join_network", "net")
    for i in range(50):
        c.call("n0", "create_entry", "t", "net", f"k{i}", b"v" * 20)
    c.run_for(10.0)
    db0, db1 = c.db("n0"), c.db("n1")
    db0.messages_to_send()
    db0._start_sync("n1", ("net",), "periodic", c.now)
    ((m, req),) = bodies(db0.messages_to_send())
    assert isinstance(req, BulkSync) and req.mode is SyncMode.REQUEST and req.sections == ()
    assert dict(req.digests)["net"] == db0._store.digest("net") == db1._store.digest("net")
    db1.receive(c.slots["n0"].addr, m.payload, now=c.now)
    ((r, rep),) = bodies(db1.messages_to_send())
    assert rep.mode is SyncMode.REPLY and rep.want == () and rep.sections == ()
    db0.receive(c.slots["n1"].addr, r.payload, now=c.now)
    assert db0.messages_to_send() == [] and db0.stats()["bulk_syncs_completed"] >= 1


def test_bulk_sync_of_different_tables_repairs_both_sides():
    cfg = fast().with_(bulk_sync_interval=1000.0, state_sync_interval=1000.0)
    c = Cluster(2, config=cfg, seed=5)
    for n in c.names:
        c.call(n, "join_network", "net")
    c.run_for(1.0)
    c.partition(["n0"], ["n1"])
    c.call("n0", "create_entry", "t", "net", "a", b"1")
    c.call("n1", "create_entry", "t", "net", "b", b"2")
    c.run_for(5.0)
    c.heal()
    c.run_for(0.001)
    c.db("n0").messages_to_send()
    c.db("n0")._start_sync("n1", ("net",), "periodic", c.now)
    c.pump("n0")
    c.run_for(0.5)
    for n in c.names:
        assert set(c.view(n, "net")) == {("t", "a"), ("t", "b")}


def test_join_sync_reports_failed_peers_after_timeout():
    c = Cluster(3, seed=6)
    for n in ("n1", "n2"):
        c.call(n, "join_network", "net")
    c.run_for(1.0)
    c.partition(["n2"])  # n0 still believes n2 alive for a moment: make it so
    c.db("n0").node_alive("n2", c.slots["n2"].addr, incarnation=9, now=c.now)
    c.take_events("n0")
    c.call("n0", "join_network", "net")
    c.run_for(c.config.bulk_sync_timeout + 0.1)
    (ev,) = [e for e in c.take_events("n0") if isinstance(e, NetworkSynced)]
    assert ev == NetworkSynced("net", ("n1",), ("n2",))


def test_join_sync_max_peers_caps_the_fanout():
    cfg = fast().with_(join_sync_max_peers=2)
    c = Cluster(6, config=cfg, seed=7)
    for n in c.names[1:]:
        c.call(n, "join_network", "net")
    c.run_for(1.0)
    c.take_events("n0")
    c.call("n0", "join_network", "net")
    c.run_for(1.0)
    (ev,) = [e for e in c.take_events("n0") if isinstance(e, NetworkSynced)]
    assert len(ev.peers) == 2 and ev.failed == ()


def test_periodic_sync_retries_another_peer_on_timeout():
    cfg = fast().with_(state_sync_interval=1000.0)
    c = Cluster(3, config=cfg, seed=8)
    for n in c.names:
        c.call(n, "join_network", "net")
    c.run_for(1.0)
    c.partition(["n2"])
    for n in ("n0", "n1"):  # nobody noticed n2 is unreachable
        c.db(n).node_alive("n2", c.slots["n2"].addr, incarnation=9, now=c.now)
    c.run_for(cfg.bulk_sync_interval * 4)
    st = c.db("n0").stats()
    assert st["bulk_syncs_failed"] >= 1 and st["bulk_syncs_completed"] >= st["bulk_syncs_failed"]


def test_state_sync_carries_every_attachment():
    c = Cluster(3, seed=9)
    c.drop_broadcasts = True
    c.call("n0", "join_network", "x")
    c.call("n1", "join_network", "y")
    db2 = c.db("n2")
    db2.messages_to_send()
    db2._start_state_sync("n0", c.now)
    ((m, body),) = bodies(db2.messages_to_send())
    assert isinstance(body, StateSync) and not body.is_reply and m.reliable
    c.pump("n2")
    c.slots["n2"].db.messages_to_send()
    c.db("n0").receive(c.slots["n2"].addr, m.payload, now=c.now)
    c.pump("n0")
    c.run_for(0.1)
    assert [a.node for a in db2.attachments("x")] == ["n0"]


def test_push_pull_state_round_trip():
    a = NetworkDB(fast(), name="a", rng=random.Random(1), now=0.0)
    b = NetworkDB(fast(), name="b", rng=random.Random(2), now=0.0)
    a.join_network("x", now=0.0)
    b.receive_push_pull_state(("10.0.0.1", 7946), a.push_pull_state(now=0.0), now=0.0)
    assert [(x.node, x.network) for x in b.attachments()] == [("a", ""), ("a", "x"), ("b", "")]
    assert b.broadcasts_to_send()[1:] == []  # push-pull records are not rebroadcast


def test_leave_records_reaped_after_tombstones():
    cfg = fast()
    c = Cluster(2, config=cfg, seed=10)
    for n in c.names:
        c.call(n, "join_network", "net")
    c.call("n0", "create_entry", "t", "net", "k", b"v")
    c.run_for(1.0)
    c.call("n0", "delete_entry", "t", "net", "k")
    t_delete = c.now
    c.run_for(1.0)
    c.call("n0", "leave_network", "net")
    t_leave = c.now
    c.run_for(1.0)
    db1 = c.db("n1")
    assert [a.leaving for a in db1.attachments("net") if a.node == "n0"] == [True]
    c.run_until(t_delete + cfg.reap_entry_interval + 0.5)
    assert db1.walk_table("t", "net", include_deleted=True) == []
    assert [a.node for a in db1.attachments("net")] == ["n0", "n1"]
    c.run_until(t_leave + cfg.reap_network_interval + 0.5)
    assert [a.node for a in db1.attachments("net")] == ["n1"]
    assert [a.node for a in c.db("n0").attachments("net")] == ["n1"]
    assert db1.stats()["attachments_reaped"] == 1
