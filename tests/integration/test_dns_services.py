"""The ``service_table`` between real agents (no root, loopback, no resolver sockets): who owns what.

Two in-process agents with ``DnsService(start_servers=False)``; the cnm service's endpoint records are
written by hand by each endpoint's own host. The names are read from each agent's ``NameTable`` (the
same table its resolvers answer from; the kernel tests ask them with dig). Bounds: FAST gossip detects a
killed node in about 2 s (tests/shell/ndb_helpers.py); waits allow 15 s.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from meshnet.cnm.records import (
    TABLE_ENDPOINTS,
    TABLE_NETWORKS,
    EndpointRecord,
    NetworkRecord,
    SubnetRecord,
    encode_endpoint,
    encode_network,
    mac_from_ip,
)
from meshnet.cnm.service_records import TABLE_SERVICES
from meshnet.runtime import Node
from meshnet.runtime.db import DbSettings
from meshnet.runtime.dns_svc import DnsConfig, DnsService
from tests.shell.ndb_helpers import FAST, NDB, api_request

NET = "a" * 24


async def _agents(nursery: trio.Nursery, tmp: Any, names: list[str]) -> dict[str, tuple[Node, DnsService]]:
    out: dict[str, tuple[Node, DnsService]] = {}
    seeds: list[Any] = []
    for i, name in enumerate(names, start=1):
        svc = DnsService(DnsConfig(start_servers=False, upstreams=()), rng=random.Random(i))
        node = Node(
            FAST,
            name=name,
            bind=(f"127.66.1.{i}", 0),
            seeds=seeds,
            networkdb=DbSettings(config=NDB),
            services=[svc],
        )
        api = str(tmp / f"{name}.sock")
        scope = trio.CancelScope()

        async def run(task_status, n=node, a=api, s=scope):
            with s:
                await n.run(api_path=a, task_status=task_status)

        await nursery.start(run)
        node.scope = scope  # type: ignore[attr-defined]
        seeds = [node.bound_addr]
        node.db_input(lambda now, n=node: n.db.core.join_network(NET, now=now))
        out[name] = (node, svc)
    return out


def _endpoint(node: Node, eid: str, name: str, ip: str, **kw: Any) -> None:
    rec = EndpointRecord(
        id=eid, name=name, network=NET, host=node.name, vtep="10.77.0.1", mac=mac_from_ip(ip), ipv4=ip, **kw
    )
    node.db_input(
        lambda now: node.db.core.put_entry(TABLE_ENDPOINTS, NET, eid, encode_endpoint(rec), now=now)
    )


def _addrs(svc: DnsService, name: str) -> list[str]:
    return sorted(str(a) for a in svc.table.addresses(name, (NET,)))


async def _until(cond, what: str, timeout: float = 15.0) -> None:
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_failed_task_host_hides_its_tasks_not_the_service(nursery, tmp_path):
    agents = await _agents(nursery, tmp_path, ["h1", "h2", "h3"])
    (h1, d1), (h2, _d2), (h3, d3) = agents["h1"], agents["h2"], agents["h3"]
    rec = NetworkRecord(NET, "frontend", 4097, (SubnetRecord("10.0.1.0/24", "10.0.1.1"),), creator="h1")
    h1.db_input(lambda now: h1.db.core.put_entry(TABLE_NETWORKS, "", NET, encode_network(rec), now=now))
    _endpoint(h1, "e1", "api1", "10.0.1.5")
    _endpoint(h2, "e2", "api2", "10.0.1.6", service="api")  # a task by its record's service field
    _endpoint(h3, "e3", "client", "10.0.1.9")
    await _until(lambda: "frontend" in {n.name for n in d1._networks.values()}, "the network on h1")
    # the service is created on h1 (which then owns the svc: entry); tasks api1 (by name) and api2
    status, body = await api_request(
        str(tmp_path / "h1.sock"),
        "POST",
        "/v1/services",
        {"name": "api", "network": "frontend", "endpoints": ["api1"]},
    )
    assert status == 201, body
    await _until(lambda: _addrs(d3, "api") == ["10.0.1.5", "10.0.1.6"], "both tasks on h3")
    owners = {e.key: e.owner for e in h3.db.core.walk_table(TABLE_SERVICES, NET)}
    sid = body["id"]
    assert owners == {f"svc:{sid}": "h1", f"task:{sid}:e1": "h1", f"task:{sid}:e2": "h2"}

    # h2 crashes: its task is hidden on h3, the service stays with the other task
    h2.scope.cancel()
    await _until(lambda: _addrs(d3, "api") == ["10.0.1.5"], "h2's task hidden on h3")
    assert _addrs(d3, "tasks.api") == ["10.0.1.5"]
    # h1 (the creator, owner of svc: and of the last task) crashes too: no task left, but the service
    # itself survives (its hidden spec entry): it is still listed, and the name is an empty answer.
    h1.scope.cancel()
    await _until(lambda: _addrs(d3, "api") == [], "h1's task hidden on h3")
    status, listing = await api_request(str(tmp_path / "h3.sock"), "GET", "/v1/services")
    assert [(s["name"], s["tasks"]) for s in listing["services"]] == [("api", [])]
    from meshnet.dns import Status
    from meshnet.dns.names import A

    assert d3.table.resolve("api", A, (NET,)).status is Status.NODATA  # the name exists: no NXDOMAIN


async def test_a_refused_upstream_fails_at_once_and_the_live_one_answers(nursery):
    """The server's UDP upstream sockets: an ICMP port-unreachable fails that upstream at once (no timeout),
    the other upstream's answer wins; with only the dead one the client gets SERVFAIL without waiting."""
    import socket as pysocket

    import dns.message
    import dns.rcode
    import dns.rrset

    from meshnet.dns import NameTable, Resolver, ResolverConfig
    from meshnet.runtime.dns_server import ResolverServer
    from meshnet.runtime.dns_svc import parse_upstream

    live = trio.socket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM)
    await live.bind(("127.66.5.3", 0))

    async def answer_everything():
        while True:
            data, addr = await live.recvfrom(4096)
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.99"))
            await live.sendto(r.to_wire(), addr)

    nursery.start_soon(answer_everything)
    dead = "127.66.5.2:53"  # nothing listens: the kernel answers with port unreachable
    config = ResolverConfig(forward_timeout=30.0)  # a timeout would hang the test: none may be needed
    both = Resolver(
        NameTable(),
        config,
        rng=random.Random(1),
        upstreams=[parse_upstream(dead), parse_upstream(f"127.66.5.3:{live.getsockname()[1]}")],
    )
    only_dead = Resolver(NameTable(), config, rng=random.Random(2), upstreams=[parse_upstream(dead)])
    servers = []
    for i, resolver in enumerate((both, only_dead)):
        server = ResolverServer(resolver, netns=None, address=(f"127.66.5.{10 + i}", 0))
        await nursery.start(server.run)
        servers.append(server)
    client = trio.socket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM)
    with trio.fail_after(10):
        await client.sendto(dns.message.make_query("ext.example.test", "A").to_wire(), servers[0].bound)
        reply = dns.message.from_wire(await client.recv(4096))
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "192.0.2.99"
        await client.sendto(dns.message.make_query("ext.example.test", "A").to_wire(), servers[1].bound)
        reply = dns.message.from_wire(await client.recv(4096))
        assert reply.rcode() == dns.rcode.SERVFAIL
    assert only_dead.stats.upstream_failures == 1 and only_dead.stats.forward_timeouts == 0
    assert both.stats.forward_answered == 1
    with trio.fail_after(5):
        while servers[0]._up_socks or servers[1]._up_socks:  # every upstream socket is closed again
            await trio.sleep(0.01)


async def test_sandbox_files_are_written_kept_current_and_removed(nursery, tmp_path):
    """resolv.conf and hosts under etc_netns/NAME follow the endpoint and the host's resolv.conf."""
    from meshnet.runtime.dns_svc import SandboxInfo, StaticSandboxes

    host_conf = tmp_path / "host-resolv.conf"
    host_conf.write_text("nameserver 127.0.0.53\nsearch corp.example\noptions ndots:3 edns0\n")
    etc = tmp_path / "etc-netns"
    boxes = StaticSandboxes()
    svc = DnsService(
        DnsConfig(
            start_servers=False, host_resolv_conf=str(host_conf), etc_netns=str(etc), retry_interval=0.2
        ),
        sandboxes=boxes,
        rng=random.Random(1),
    )
    node = Node(FAST, name="h1", bind=("127.66.1.20", 0), networkdb=DbSettings(config=NDB), services=[svc])
    await nursery.start(node.run)
    node.db_input(lambda now: node.db.core.join_network(NET, now=now))
    _endpoint(node, "e1", "web", "10.0.1.5")
    boxes.add(SandboxInfo("sb1", "web", "/run/netns/mn-sb-web", ("e1",)))
    hosts, resolv = etc / "mn-sb-web" / "hosts", etc / "mn-sb-web" / "resolv.conf"
    await _until(lambda: hosts.exists() and "10.0.1.5\tweb" in hosts.read_text(), "hosts written")
    text = resolv.read_text()
    assert "nameserver 127.0.0.11" in text and "search corp.example" in text
    assert "options edns0 ndots:0" in text and "ndots:3" not in text
    assert svc.dns_json()["upstreams"] == [{"address": "127.0.0.53", "port": 53, "host_loopback": True}]
    # the endpoint's address changes: hosts follows
    _endpoint(node, "e1", "web", "10.0.1.6")
    await _until(lambda: "10.0.1.6\tweb" in hosts.read_text(), "hosts rewritten")
    # the host's resolv.conf changes: the sandbox's follows (and so do the upstreams)
    host_conf.write_text("nameserver 127.0.0.54\nsearch other.example\n")
    await _until(lambda: "search other.example" in resolv.read_text(), "resolv.conf rewritten")
    assert svc.dns_json()["upstreams"][0]["address"] == "127.0.0.54"
    # the sandbox goes: its files go, and the directory with them
    boxes.remove("sb1")
    await _until(lambda: not (etc / "mn-sb-web").exists(), "files removed")
    # a directory holding a file that is not ours is kept (only our files are removed)
    boxes.add(SandboxInfo("sb2", "web", "/run/netns/mn-sb-web", ("e1",)))
    await _until(lambda: hosts.exists(), "hosts written again")
    (etc / "mn-sb-web" / "nsswitch.conf").write_text("hosts: files dns\n")
    boxes.remove("sb2")
    await _until(lambda: not hosts.exists() and not resolv.exists(), "our files removed")
    assert (etc / "mn-sb-web" / "nsswitch.conf").exists()
    node.stop()
