"""NetworkDB riding real Swim cores in the trio runtime, over loopback sockets, in one trio process.

Replication, hide-on-crash, restart with the same state directory (re-assertion above the persisted
high-water mark), restart with an empty one (owner authority deletes the old entries cluster-wide),
ownership lost to another writer, and a state write failure stopping the node before it sends.
Every wait is bounded (``wait_until``); the gossip timing (``FAST``) detects a crash in about 2 s.
"""

from __future__ import annotations

import os

import trio

from meshnet.core.drive import Outputs
from meshnet.networkdb import HighWaterRaised
from meshnet.runtime import state as state_mod
from tests.shell.helpers import wait_until
from tests.shell.ndb_helpers import NDB, DbCluster

IPS = {"a": "127.0.8.1", "b": "127.0.8.2", "c": "127.0.8.3"}


async def start_three(cluster: DbCluster, networks: tuple[str, ...] = ("ov",)) -> None:
    await cluster.start("a", IPS["a"])
    await cluster.start("b", IPS["b"], join="a")
    await cluster.start("c", IPS["c"], join="a")
    await wait_until(
        lambda: all(
            set(cluster.states(n).values()) == {"alive"} and len(cluster.states(n)) == 3 for n in "abc"
        ),
        10,
        "all three alive everywhere",
    )
    for name in "abc":
        for net in networks:
            cluster.nodes[name].db_input(
                lambda now, net=net, name=name: cluster.db(name).join_network(net, now=now)
            )
    await wait_until(
        lambda: all(
            sorted(cluster.db(n).peers(net)) == sorted(set("abc") - {n}) for n in "abc" for net in networks
        ),
        10,
        "every node to see the other two in every network",
    )


def visible(cluster: DbCluster, viewer: str, table: str, net: str, key: str, *, hidden: bool = False):
    return cluster.db(viewer).get_entry(table, net, key, include_hidden=hidden)


def put(cluster: DbCluster, name: str, table: str, net: str, key: str, value: bytes):
    return cluster.nodes[name].db_input(
        lambda now: cluster.db(name).put_entry(table, net, key, value, now=now)
    )


async def test_entries_replicate_and_leaves_remove_them(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path)
        await start_three(cluster)
        cid = cluster.db("a").cluster_id
        assert cid and cluster.db("b").cluster_id == cid == cluster.db("c").cluster_id
        put(cluster, "a", "endpoints", "ov", "ep1", b"10.0.0.1")
        put(cluster, "b", "services", "", "web", b"vip")
        await wait_until(
            lambda: all(
                visible(cluster, n, "endpoints", "ov", "ep1") is not None
                and visible(cluster, n, "services", "", "web") is not None
                for n in "abc"
            ),
            5,
            "both entries everywhere",
        )
        assert visible(cluster, "c", "endpoints", "ov", "ep1").value == b"10.0.0.1"

        # c leaves the network: it drops the entries, and a stops counting it as a peer.
        cluster.nodes["c"].db_input(lambda now: cluster.db("c").leave_network("ov", now=now))
        assert "ov" not in cluster.db("c").networks()
        await wait_until(lambda: "c" not in cluster.db("a").peers("ov"), 5, "c gone from ov's peers at a")

        # b leaves the cluster gracefully: its entries are removed for good (not hidden) elsewhere.
        assert await cluster.nodes["b"].leave() is True
        cluster.nodes["b"].stop()
        await wait_until(
            lambda: all(visible(cluster, n, "services", "", "web", hidden=True) is None for n in "ac"),
            10,
            "b's entry removed at a and c",
        )
        nursery.cancel_scope.cancel()


async def test_a_crashed_node_is_hidden_and_restarted_with_its_state_reasserts_its_entries(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path)
        await start_three(cluster)
        old = put(cluster, "c", "endpoints", "ov", "epc", b"10.0.0.3")
        put(cluster, "c", "services", "", "db", b"vip-c")
        await wait_until(
            lambda: all(visible(cluster, n, "endpoints", "ov", "epc") is not None for n in "ab"),
            5,
            "c's entry at a and b",
        )
        high_water = cluster.nodes["c"].db.core.state_high_water
        await wait_until(lambda: cluster.nodes["c"].db._durable >= 2, 5, "c's journal on disk")

        cluster.kill("c")
        await wait_until(
            lambda: all(visible(cluster, n, "endpoints", "ov", "epc") is None for n in "ab"),
            10,
            "c's entry hidden at a and b once c is declared failed",
        )
        assert visible(cluster, "a", "endpoints", "ov", "epc", hidden=True).value == b"10.0.0.3"

        node = await cluster.start("c", IPS["c"], join="a")
        assert node.db.stats["restored_entries"] == 2 and node.db.stats["restored_networks"] == 1
        mine = visible(cluster, "c", "endpoints", "ov", "epc")
        assert mine is not None and mine.owner == "c" and mine.ltime > high_water >= old.ltime
        await wait_until(
            lambda: (
                all(
                    (e := visible(cluster, n, "endpoints", "ov", "epc")) is not None and e.ltime == mine.ltime
                    for n in "ab"
                )
                and all(visible(cluster, n, "services", "", "db") is not None for n in "ab")
            ),
            10,
            "c's re-asserted entries visible at a and b",
        )
        nursery.cancel_scope.cancel()


async def test_a_node_restarted_with_an_empty_state_dir_has_its_entries_deleted_cluster_wide(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path)
        await start_three(cluster)
        put(cluster, "c", "endpoints", "ov", "epc", b"10.0.0.3")
        put(cluster, "c", "services", "", "db", b"vip-c")
        await wait_until(
            lambda: (
                all(visible(cluster, n, "services", "", "db") is not None for n in "ab")
                and all(visible(cluster, n, "endpoints", "ov", "epc") is not None for n in "ab")
            ),
            5,
            "c's entries at a and b",
        )
        cluster.kill("c")
        await wait_until(
            lambda: all(visible(cluster, n, "services", "", "db") is None for n in "ab"),
            10,
            "c's entries hidden at a and b",
        )
        node = await cluster.start("c", IPS["c"], join="a", state_dir=cluster.state_dir("c", ".empty"))
        assert node.db.stats["restored_entries"] == 0

        def deleted_everywhere() -> bool:
            for n in "abc":
                db = cluster.db(n)
                tomb = [
                    e
                    for e in db.walk_table("services", "", include_deleted=True, include_hidden=True)
                    if e.key == "db"
                ]
                if len(tomb) != 1 or not tomb[0].deleted or tomb[0].owner != "c":
                    return False
                if n != "c" and db.get_entry("endpoints", "ov", "epc", include_hidden=True) is not None:
                    return False
            return True

        await wait_until(deleted_everywhere, 15, "c's old entries deleted at a, b and c (not hidden)")
        nursery.cancel_scope.cancel()


async def test_an_entry_taken_over_by_another_writer_is_not_reasserted_after_a_restart(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path)
        await start_three(cluster)
        put(cluster, "c", "endpoints", "ov", "shared", b"from-c")
        put(cluster, "c", "endpoints", "ov", "own", b"c-only")
        await wait_until(
            lambda: visible(cluster, "a", "endpoints", "ov", "shared") is not None, 5, "shared at a"
        )
        put(cluster, "a", "endpoints", "ov", "shared", b"from-a")
        await wait_until(
            lambda: ("ov", "endpoints", "shared") not in cluster.nodes["c"].db.owned,
            5,
            "c to learn that a took the key over",
        )
        await wait_until(
            lambda: cluster.nodes["c"].db._durable == cluster.nodes["c"].db.journal_seq, 5, "journal"
        )
        cluster.kill("c")
        await wait_until(lambda: cluster.states("a").get("c") == "dead", 10, "c failed at a")
        node = await cluster.start("c", IPS["c"], join="a")
        assert node.db.stats["restored_entries"] == 1  # "own" only
        await wait_until(
            lambda: (e := visible(cluster, "c", "endpoints", "ov", "shared")) is not None and e.owner == "a",
            10,
            "c to learn a's value of the shared key",
        )
        assert visible(cluster, "b", "endpoints", "ov", "shared").value == b"from-a"
        assert visible(cluster, "a", "endpoints", "ov", "shared").value == b"from-a"
        nursery.cancel_scope.cancel()


async def test_a_failed_high_water_write_stops_the_node_before_it_sends(tmp_path, monkeypatch):
    real_save = state_mod.StateDir.save_node
    limit = {"high_water": 10**9}

    def save_node(self, *, cluster_id, high_water, networks):
        if high_water > limit["high_water"]:
            raise OSError(28, "No space left on device")
        real_save(self, cluster_id=cluster_id, high_water=high_water, networks=networks)

    monkeypatch.setattr(state_mod.StateDir, "save_node", save_node)
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path, ndb_config=NDB.with_(high_water_block=4))
        await cluster.start("a", IPS["a"])
        b = await cluster.start("b", IPS["b"], join="a")
        await wait_until(lambda: cluster.states("a").get("b") == "alive", 10, "b alive at a")
        for name in "ab":
            cluster.nodes[name].db_input(lambda now, name=name: cluster.db(name).join_network("ov", now=now))
        await wait_until(lambda: cluster.db("a").peers("ov") == ["b"], 10, "b in ov at a")
        put(cluster, "b", "t", "ov", "first", b"1")
        await wait_until(lambda: visible(cluster, "a", "t", "ov", "first") is not None, 5, "first at a")
        limit["high_water"] = b.db.core.state_high_water  # the next raise fails
        key = None
        for i in range(10):
            key = f"k{i}"
            put(cluster, "b", "t", "ov", key, b"x")
            if b.fatal is not None:
                break
        assert b.fatal is not None and "No space left" in b.fatal
        with trio.fail_after(5):
            await b.wait_stopped()
        await trio.sleep(1.0)  # ten NetworkDB gossip intervals: the write would have arrived by now
        assert visible(cluster, "a", "t", "ov", key, hidden=True) is None
        with open(os.path.join(cluster.state_dir("b"), "node.json")) as fh:
            assert f'"high_water": {limit["high_water"]}' in fh.read()
        nursery.cancel_scope.cancel()


async def test_dispatch_persists_a_raised_high_water_mark_before_it_sends(tmp_path, monkeypatch):
    """The step's datagrams leave only after node.json holds the mark (and never if that write fails)."""
    fail = {"on": False}
    real_save = state_mod.StateDir.save_node

    def save_node(self, **kw):
        if fail["on"]:
            raise OSError(5, "Input/output error")
        real_save(self, **kw)

    monkeypatch.setattr(state_mod.StateDir, "save_node", save_node)
    listener = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await listener.bind(("127.0.8.9", 0))
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path)
        node = await cluster.start("a", IPS["a"])
        dest = listener.getsockname()

        node._dispatch(Outputs(datagrams=[(dest, b"one")], rider_events=[HighWaterRaised(4096)]))
        with trio.fail_after(5):
            assert (await listener.recvfrom(100))[0] == b"one"  # the positive control

        fail["on"] = True
        queued = node._dgram_send.statistics().current_buffer_used
        node._dispatch(Outputs(datagrams=[(dest, b"two")], rider_events=[HighWaterRaised(8192)]))
        assert node._dgram_send.statistics().current_buffer_used == queued  # nothing handed to the sender
        assert node.fatal is not None and "Input/output error" in node.fatal
        with trio.fail_after(5):
            await node.wait_stopped()
        with trio.move_on_after(0.5) as quiet:
            await listener.recvfrom(100)
        assert quiet.cancelled_caught, "a datagram left although its high-water mark was not persisted"
        nursery.cancel_scope.cancel()
    listener.close()


async def test_a_node_that_left_gracefully_and_restarts_with_its_state_brings_its_entries_back(tmp_path):
    """The common case of a service restart: SIGTERM (leave) removes the entries, the restart re-asserts."""
    async with trio.open_nursery() as nursery:
        cluster = DbCluster(nursery, tmp_path)
        await start_three(cluster)
        put(cluster, "c", "endpoints", "ov", "epc", b"10.0.0.3")
        await wait_until(lambda: visible(cluster, "a", "endpoints", "ov", "epc") is not None, 5, "epc at a")
        await wait_until(lambda: cluster.nodes["c"].db._durable >= 1, 5, "c's journal on disk")
        assert await cluster.nodes["c"].leave() is True
        cluster.nodes["c"].stop()
        await cluster.nodes["c"].wait_stopped()
        await wait_until(
            lambda: all(visible(cluster, n, "endpoints", "ov", "epc", hidden=True) is None for n in "ab"),
            10,
            "c's entry removed at a and b after its leave",
        )
        await cluster.start("c", IPS["c"], join="a")
        await wait_until(
            lambda: all(visible(cluster, n, "endpoints", "ov", "epc") is not None for n in "ab"),
            10,
            "c's entry back at a and b after the restart",
        )
        nursery.cancel_scope.cancel()
