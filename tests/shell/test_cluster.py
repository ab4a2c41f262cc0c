"""Real ``Swim`` cores driven by the trio shell over loopback sockets, in one trio process.

Shortened intervals (``FAST``) keep each test to a few seconds of real time; every wait is bounded.
"""

from __future__ import annotations

import functools
import json

import trio

from meshnet.gossip.config import local
from meshnet.runtime import Node
from meshnet.runtime.tags import encode_tags
from tests.shell.helpers import http_raw, split_response, wait_until

FAST = local().with_(
    probe_interval=0.2,
    probe_timeout=0.1,
    gossip_interval=0.05,
    suspicion_mult=2,
    tcp_timeout=1.0,
    push_pull_interval=2.0,
    leave_timeout=2.0,
)


class Cluster:
    """Nodes on 127.0.0.61.. (ephemeral ports), each in its own cancel scope so one can be killed."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.nodes: dict[str, Node] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(
        self, name: str, ip: str, *, join: Node | None = None, api_path: str | None = None, **kw
    ) -> Node:
        seeds = [join.bound_addr] if join is not None else []
        node = Node(FAST, name=name, bind=(ip, 0), seeds=seeds, **kw)

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                self.scopes[name] = scope
                await node.run(api_path=api_path, task_status=task_status)

        await self.nursery.start(run)
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """A crash: the node's tasks are cancelled and its sockets closed, with no leave."""
        self.scopes[name].cancel()

    def states(self, viewer: str) -> dict[str, str]:
        return {m.name: m.state for m in self.nodes[viewer].members()}


async def start_three(nursery: trio.Nursery, **kw) -> Cluster:
    cluster = Cluster(nursery)
    a = await cluster.start("a", "127.0.0.61", **kw)
    await cluster.start("b", "127.0.0.62", join=a)
    await cluster.start("c", "127.0.0.63", join=a)
    want = {"a": "alive", "b": "alive", "c": "alive"}
    await wait_until(lambda: all(cluster.states(n) == want for n in "abc"), 10, "all three alive everywhere")
    return cluster


async def test_three_nodes_join_and_see_each_other_alive():
    async with trio.open_nursery() as nursery:
        cluster = await start_three(nursery)
        b = {m.name: m for m in cluster.nodes["b"].members()}
        assert (b["c"].addr, b["c"].port) == cluster.nodes["c"].bound_addr
        assert cluster.nodes["b"].is_joined
        nursery.cancel_scope.cancel()


async def test_a_killed_node_is_detected_failed():
    async with trio.open_nursery() as nursery:
        cluster = await start_three(nursery)
        cluster.kill("c")
        await wait_until(
            lambda: cluster.states("a").get("c") == "dead" and cluster.states("b").get("c") == "dead",
            15,
            "c detected failed by a and b",
        )
        assert cluster.states("a")["b"] == "alive"
        nursery.cancel_scope.cancel()


async def test_a_leaving_node_is_seen_left():
    async with trio.open_nursery() as nursery:
        cluster = await start_three(nursery)
        assert await cluster.nodes["b"].leave() is True
        cluster.nodes["b"].stop()
        await wait_until(
            lambda: cluster.states("a").get("b") == "left" and cluster.states("c").get("b") == "left",
            10,
            "b seen left",
        )
        nursery.cancel_scope.cancel()


async def test_garbage_over_udp_and_tcp_does_not_crash_a_real_node():
    async with trio.open_nursery() as nursery:
        cluster = await start_three(nursery)
        a = cluster.nodes["a"]
        junk = [
            b"",
            b"\x00",
            b"\x07\xff\x00\x01",
            b"\x0c" + b"\x00" * 8,
            bytes(range(256)) * 4,
            b"\x06" * 1000,
        ]
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with udp:
            await udp.bind(("127.0.0.64", 0))
            for data in junk:
                await udp.sendto(data, a.bound_addr)
        for data in junk:
            with trio.fail_after(3):
                stream = await trio.open_tcp_stream(*a.bound_addr)
                async with stream:
                    try:
                        await stream.send_all(data)
                        await stream.send_eof()
                        while await stream.receive_some(65536):
                            pass
                    except trio.BrokenResourceError:
                        pass
        await wait_until(lambda: a.stats["udp_received"] >= len(junk) - 1, 3, "junk datagrams received")
        assert a.stats["core_errors"] == 0
        # Still a healthy member of a healthy cluster afterwards.
        assert cluster.states("b")["a"] == "alive" and cluster.states("a") == {
            "a": "alive",
            "b": "alive",
            "c": "alive",
        }
        nursery.cancel_scope.cancel()


async def test_api_lists_a_real_clusters_members_with_tags(tmp_path):
    path = str(tmp_path / "a.sock")
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        a = await cluster.start("a", "127.0.0.65", api_path=path, meta=encode_tags({"role": "db"}))
        await cluster.start("b", "127.0.0.66", join=a, meta=encode_tags({"role": "web", "dc": "lab"}))
        await wait_until(lambda: cluster.states("a").get("b") == "alive", 10, "b alive at a")
        raw = await http_raw(path, b"GET /v1/members HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = split_response(raw)
        assert status == 200
        members = {m["name"]: m for m in json.loads(body)["members"]}
        assert members["a"]["tags"] == {"role": "db"}
        assert members["b"]["tags"] == {"dc": "lab", "role": "web"}
        assert members["b"]["state"] == "alive" and members["b"]["port"] == cluster.nodes["b"].bound_addr[1]
        nursery.cancel_scope.cancel()


async def test_run_node_reports_the_bound_address():
    from meshnet.runtime import run_node

    async with trio.open_nursery() as nursery:
        addr = await nursery.start(functools.partial(run_node, FAST, name="solo", bind=("127.0.0.67", 0)))
        assert addr[0] == "127.0.0.67" and addr[1] > 0
        nursery.cancel_scope.cancel()
