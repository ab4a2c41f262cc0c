"""The ``cnm`` service in the runtime: in-process agents (gossip, NetworkDB, IPAM, CNM) over loopback, each
with a ``MemoryDataplane``. Networks and endpoints replicate through NetworkDB; each host programs its
own overlay; every API error and every injected step failure leaves nothing behind."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from meshnet.dataplane import AddFdbEntry, DelFdbEntry, MemoryDataplane
from meshnet.ipam.config import fast as ipam_fast
from meshnet.runtime import Node
from meshnet.runtime.cnm_svc import CnmService
from meshnet.runtime.db import DbSettings
from meshnet.runtime.ipam_svc import IpamService
from tests.shell.ndb_helpers import FAST, NDB, api_request

#: Every wait below: gossip join and NetworkDB spread on loopback take well under a second each.
WAIT = 20.0


class Host:
    def __init__(self, name: str, ip: str, tmp: Path) -> None:
        self.name = name
        self.ip = ip
        self.state = str(tmp / f"{name}.state")
        self.api = str(tmp / f"{name}.sock")
        self.dp = MemoryDataplane()
        self.node: Any = None
        self.cnm: Any = None
        self.ipam: Any = None
        self.scope: trio.CancelScope | None = None
        self.port = 0

    async def start(self, nursery: trio.Nursery, seeds: list[tuple[str, int]], seed: int) -> None:
        rng = random.Random(seed)
        self.ipam = IpamService(ipam_fast(), rng=random.Random(rng.getrandbits(64)))
        self.cnm = CnmService(
            self.dp,
            data_addr=self.ip,
            netns_prefix=f"{self.name}-",
            reconcile_interval=1.0,
            rng=random.Random(rng.getrandbits(64)),
            settle_delay=0.5,
        )
        self.node = Node(
            FAST,
            name=self.name,
            bind=(self.ip, self.port),
            seeds=seeds,
            rng=rng,
            networkdb=DbSettings(config=NDB, state_dir=self.state),
            services=[self.ipam, self.cnm],
        )

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scope = scope
                await self.node.run(api_path=self.api, task_status=task_status)

        await nursery.start(run)
        self.port = self.node.bound_addr[1]

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await api_request(self.api, method, path, body)


async def until(pred: Any, what: str, timeout: float = WAIT) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def cluster(nursery: trio.Nursery, tmp: Path, n: int = 3) -> list[Host]:
    hosts = [Host(f"h{i + 1}", f"127.0.8.{71 + i}", tmp) for i in range(n)]
    await hosts[0].start(nursery, [], seed=1)
    for i, h in enumerate(hosts[1:], start=2):
        await h.start(nursery, [hosts[0].node.bound_addr], seed=i)
    await until(lambda: all(len([m for m in h.node.members() if m.state == "alive"]) == n for h in hosts), "members")
    return hosts


def fdb(host: Host) -> dict[str, set[tuple[str, str]]]:
    """Overlay namespace -> {(mac, vtep)} on vxlan0."""
    snap = host.dp.snapshot()
    return {
        ns: {(e.mac, e.dst) for e in st.fdb if e.dev == "vxlan0"}
        for ns, st in snap.namespaces.items()
        if ns.startswith(f"{host.name}-ov-")
    }


def neigh(host: Host) -> dict[str, set[tuple[str, str]]]:
    snap = host.dp.snapshot()
    return {
        ns: {(x.ip, x.mac) for x in st.neighbours if x.dev == "vxlan0" and x.permanent}
        for ns, st in snap.namespaces.items()
        if ns.startswith(f"{host.name}-ov-")
    }


@pytest.mark.hang_guard(120)
async def test_network_on_a_containers_on_b_and_c_program_each_other(tmp_path):
    async with trio.open_nursery() as nursery:
        a, b, c = await cluster(nursery, tmp_path)
        status, net = await a.call("POST", "/v1/networks", {"name": "web", "subnet": "10.9.0.0/24"})
        assert status == 201, net
        vni = net["vni"]
        await until(lambda: any(n.name == "web" for n in c.cnm.networks()), "network record on c")
        status, body = await b.call("POST", "/v1/attach", {"network": "web", "sandbox": "c1"})
        assert status == 201, body
        ep_b = body["endpoint"]
        status, body = await c.call("POST", "/v1/attach", {"network": "web", "sandbox": "c2", "aliases": ["db"]})
        assert status == 201, body
        ep_c = body["endpoint"]
        assert ep_b["ipv4"] != ep_c["ipv4"] and ep_b["ipv4"].startswith("10.9.0.")
        assert body["sandbox"]["endpoints"][0]["ifname"] == "eth0"
        ov_b, ov_c = f"h2-ov-{vni}", f"h3-ov-{vni}"
        await until(lambda: fdb(b).get(ov_b) == {(ep_c["mac"], c.ip)}, "b's FDB entry for c's container")
        await until(lambda: fdb(c).get(ov_c) == {(ep_b["mac"], b.ip)}, "c's FDB entry for b's container")
        assert neigh(b)[ov_b] == {(ep_c["ipv4"], ep_c["mac"])}
        assert neigh(c)[ov_c] == {(ep_b["ipv4"], ep_b["mac"])}
        assert fdb(a) == {}  # no local endpoint on a: no overlay namespace there
        # b's container side: eth0 with the endpoint's MAC and address in h2-sb-c1, its veth on br0.
        snap = b.dp.snapshot()
        eth0 = snap.link("h2-sb-c1", "eth0")
        assert eth0 is not None and eth0.mac == ep_b["mac"] and eth0.up and eth0.mtu == snap.link(ov_b, "br0").mtu
        assert {x.cidr for x in snap.get("h2-sb-c1").addresses} == {ep_b["ipv4"] + "/24"}
        assert snap.link(ov_b, "vxlan0").vni == vni
        # Every host lists both endpoints; c's inspect of the network shows them with hosts.
        status, body = await c.call("GET", "/v1/networks/web")
        assert status == 200 and {(e["name"], e["host"]) for e in body["endpoints"]} == {("c1", "h2"), ("c2", "h3")}
        # Deleting c's container removes its entries on b.
        status, body = await c.call("DELETE", "/v1/sandboxes/c2")
        assert status == 200, body
        await until(lambda: fdb(b).get(ov_b) == set(), "b's FDB entry for c's container gone")
        assert neigh(b)[ov_b] == set()
        assert not any(ns.startswith("h3-") for ns in c.dp.namespaces())  # c's overlay and sandbox are gone
        # The network cannot go while b's endpoint exists (a sees it through the network's tables).
        status, body = await a.call("DELETE", "/v1/networks/web")
        assert (status, body["code"]) == (409, "in_use"), body
        nursery.cancel_scope.cancel()
