"""The embedded DNS with real clients in real namespaces (issue 6): ``dig`` and ``getent`` inside sandboxes.

The lab (``test_dns_harness.py`` runs the same names with real agent processes in the netns harness;
this one adds what needs control inside the agent: upstream limits, a silent upstream, crash injection):
two agents ``h1`` and ``h2`` (real ``Node``s
with gossip, NetworkDB and ``DnsService``) in this trio process on 127.66.0.1/2; the cnm service's
writes are done by hand: network records in ``networks``, endpoint records in ``endpoint_table`` written
by the endpoint's own host, sandboxes handed to each agent's ``DnsService`` through ``StaticSandboxes``.
Each sandbox is a real namespace (``ip netns add``, loopback up); its resolver listens on 127.0.0.11:53
inside it, and the clients run there with ``ip netns exec`` (which bind-mounts the resolv.conf and hosts
the service wrote under /etc/netns/NAME). Upstreams are a dnsmasq on 127.66.0.53 and a silent UDP socket
on 127.66.0.55 (a dead server that swallows queries), both in the test's namespace on loopback; dnsmasq
forwards ``*.slow.test`` to the silent one.

Bounds: names written on one agent reach the other within NetworkDB's fast-profile gossip (well under a
second); waits allow 10 s. dig runs with ``+time=2 +tries=1``: an answer must come within 2 s, which a
resolver trying its upstreams one after the other with 4 s timeouts (libnetwork) cannot meet.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
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
from meshnet.dns import ResolverConfig
from meshnet.runtime import Node
from meshnet.runtime.db import DbSettings
from meshnet.runtime.dns_svc import DnsConfig, DnsService, SandboxInfo, StaticSandboxes
from tests.conftest import require_tool
from tests.shell.ndb_helpers import FAST, NDB, api_request

pytestmark = [pytest.mark.root, pytest.mark.hang_guard(120)]

DNSMASQ_IP = "127.66.0.53"
SILENT_IP = "127.66.0.55"
FRONT = "f" * 24
BACK = "b" * 24
LIMIT = 4  # max_concurrent_forwards of the lab's resolvers


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Lab:
    def __init__(self, tmp: Any) -> None:
        self.tmp = tmp
        self.tag = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.dns: dict[str, DnsService] = {}
        self.boxes: dict[str, StaticSandboxes] = {}
        self.procs: list[subprocess.Popen] = []
        self.silent: socket.socket | None = None
        self.silent_seen = 0

    # -- namespaces and upstreams

    def netns(self, short: str) -> str:
        name = f"mndns-{self.tag}-{short}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def start_upstreams(self) -> None:
        dnsmasq = require_tool("dnsmasq", "the upstream resolver of the DNS forwarding tests")
        self.silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.silent.bind((SILENT_IP, 53))
        self.silent.setblocking(False)
        proc = subprocess.Popen(
            [
                dnsmasq,
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                f"--listen-address={DNSMASQ_IP}",
                "--port=53",
                "--pid-file=",
                "--user=root",
                "--host-record=ext.example.test,192.0.2.7",
                "--host-record=also.example.test,192.0.2.8",
                f"--server=/slow.test/{SILENT_IP}",
                "--edns-packet-max=512",  # its UDP answers are cut at 512 bytes (TC): retried over TCP
                *[f"--host-record=big.example.test,192.0.2.{i}" for i in range(1, 61)],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)

    def drain_silent(self) -> int:
        """Count what reached the silent upstream so far (it never answers)."""
        assert self.silent is not None
        while True:
            try:
                self.silent.recv(65535)
            except BlockingIOError:
                return self.silent_seen
            self.silent_seen += 1

    # -- agents

    async def start_agents(self, nursery: trio.Nursery) -> None:
        config = DnsConfig(
            resolver=ResolverConfig(max_concurrent_forwards=LIMIT, forward_timeout=1.5),
            upstreams=(DNSMASQ_IP, SILENT_IP),
        )
        seeds: list[Any] = []
        for i, name in enumerate(("h1", "h2"), start=1):
            boxes = StaticSandboxes()
            svc = DnsService(config, sandboxes=boxes)
            node = Node(
                FAST,
                name=name,
                bind=(f"127.66.0.{i}", 0),
                seeds=seeds,
                networkdb=DbSettings(config=NDB),
                services=[svc],
            )
            api = str(self.tmp / f"{name}.sock")
            await nursery.start(lambda task_status, n=node, a=api: n.run(api_path=a, task_status=task_status))
            seeds = [node.bound_addr]
            self.nodes[name], self.dns[name], self.boxes[name] = node, svc, boxes
        with trio.fail_after(10):
            while len([m for m in self.nodes["h1"].members() if str(m.state).lower().endswith("alive")]) < 2:
                await trio.sleep(0.05)

    def api(self, host: str) -> str:
        return str(self.tmp / f"{host}.sock")

    def put(self, host: str, table: str, network: str, key: str, value: bytes) -> None:
        node = self.nodes[host]
        node.db_input(lambda now: node.db.core.put_entry(table, network, key, value, now=now))

    def delete(self, host: str, table: str, network: str, key: str) -> None:
        node = self.nodes[host]
        node.db_input(lambda now: node.db.core.delete_entry(table, network, key, now=now))

    def join(self, host: str, network: str) -> None:
        node = self.nodes[host]
        node.db_input(lambda now: node.db.core.join_network(network, now=now))

    def endpoint(self, host: str, network: str, eid: str, name: str, ip: str, **kw: Any) -> None:
        rec = EndpointRecord(
            id=eid,
            name=name,
            network=network,
            host=host,
            vtep="10.77.0.1",
            mac=mac_from_ip(ip),
            ipv4=ip,
            **kw,
        )
        self.put(host, TABLE_ENDPOINTS, network, eid, encode_endpoint(rec))

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.silent is not None:
            self.silent.close()
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


async def _in(ns: str, *argv: str, timeout: float = 8.0) -> subprocess.CompletedProcess:
    with trio.fail_after(timeout):
        return await trio.run_process(
            ["ip", "netns", "exec", ns, *argv], capture_stdout=True, capture_stderr=True, check=False
        )


async def dig(ns: str, *args: str) -> tuple[str, list[str]]:
    """(status, answer lines ``NAME TYPE DATA``) of ``dig`` run inside ``ns`` against 127.0.0.11."""
    res = await _in(ns, "dig", "@127.0.0.11", "+time=2", "+tries=1", "+noall", "+comments", "+answer", *args)
    out = res.stdout.decode()
    status = "TIMEOUT"
    for line in out.splitlines():
        if "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
    answers = []
    for line in out.splitlines():
        if line and not line.startswith(";"):
            parts = line.split()
            answers.append(" ".join([parts[0].rstrip(".").lower(), parts[3], " ".join(parts[4:])]))
    return status, sorted(answers)


async def wait_for_answer(
    ns: str, name: str, want: str, *args: str, timeout: float = 10.0
) -> tuple[str, list[str]]:
    """Ask until the status is ``want`` (names travel through NetworkDB first)."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            last = await dig(ns, name, *args)
            if last[0] == want:
                return last
            await trio.sleep(0.1)
    raise AssertionError(f"{name} {args}: wanted {want}, last answer {last}")


@pytest.fixture
async def lab(tmp_path, nursery):
    require_tool("dig", "the DNS client in the sandboxes")
    lab = Lab(tmp_path)
    try:
        lab.start_upstreams()
        await lab.start_agents(nursery)
        for host in ("h1", "h2"):
            for net in (FRONT, BACK):
                lab.join(host, net)
        frontend = NetworkRecord(
            FRONT, "frontend", 4097, (SubnetRecord("10.0.1.0/24", "10.0.1.1"),), creator="h1"
        )
        backend = NetworkRecord(
            BACK, "backend", 4098, (SubnetRecord("10.0.2.0/24", "10.0.2.1"),), creator="h1"
        )
        lab.put("h1", TABLE_NETWORKS, "", FRONT, encode_network(frontend))
        lab.put("h1", TABLE_NETWORKS, "", BACK, encode_network(backend))
        # h1: container web (alias www) and api task api1 on frontend, a container on backend only.
        lab.endpoint("h1", FRONT, "e-web", "web", "10.0.1.2", aliases=("www",))
        lab.endpoint("h1", FRONT, "e-api1", "api1", "10.0.1.5")
        lab.endpoint("h1", BACK, "e-secret", "secret", "10.0.2.2")
        # h2: api task api2 and the client container on frontend.
        lab.endpoint("h2", FRONT, "e-api2", "api2", "10.0.1.6")
        lab.endpoint("h2", FRONT, "e-client", "client", "10.0.1.9")
        lab.ns_client = lab.netns("client")
        lab.ns_web = lab.netns("web")
        lab.boxes["h2"].add(SandboxInfo("sb-client", "client", f"/run/netns/{lab.ns_client}", ("e-client",)))
        lab.boxes["h1"].add(SandboxInfo("sb-web", "web", f"/run/netns/{lab.ns_web}", ("e-web",)))
        with trio.fail_after(10):
            while not all(d.stats()["serving"] == 1 and len(d._networks) == 2 for d in lab.dns.values()):
                await trio.sleep(0.05)
        yield lab
    finally:
        for node in lab.nodes.values():
            node.stop()
        lab.cleanup()


async def test_names_of_containers_on_another_host_resolve_and_scope_holds(lab):
    ns = lab.ns_client  # on h2; web lives on h1
    status, answers = await wait_for_answer(ns, "web", "NOERROR")
    assert answers == ["web A 10.0.1.2"]
    assert await dig(ns, "www") == ("NOERROR", ["www A 10.0.1.2"])
    assert await dig(ns, "web.frontend") == ("NOERROR", ["web.frontend A 10.0.1.2"])
    assert await dig(ns, "WEB.Frontend") == ("NOERROR", ["web.frontend A 10.0.1.2"])  # case-insensitive
    assert await dig(ns, "-x", "10.0.1.2") == ("NOERROR", ["2.1.0.10.in-addr.arpa PTR web.frontend."])
    # secret is on backend, which the client's sandbox is not attached to: authoritative NXDOMAIN, no leak
    seen = lab.drain_silent()
    assert (await dig(ns, "secret"))[0] == "NXDOMAIN"
    assert (await dig(ns, "secret.backend"))[0] == "NXDOMAIN"
    assert (await dig(ns, "-x", "10.0.2.2"))[0] == "NXDOMAIN"
    assert (await dig(ns, "nosuch.frontend"))[0] == "NXDOMAIN"
    # web's own sandbox (h1) resolves the same names through its own resolver
    assert (await dig(lab.ns_web, "api2"))[1] == ["api2 A 10.0.1.6"]
    # Cluster names never went upstream (the silent server saw nothing new; dnsmasq would forward
    # secret.backend nowhere, but it is only asked for names outside the cluster's networks).
    assert lab.drain_silent() == seen

    # a removed container becomes NXDOMAIN
    lab.delete("h1", TABLE_ENDPOINTS, FRONT, "e-web")
    await wait_for_answer(ns, "web", "NXDOMAIN")
    assert (await dig(ns, "www"))[0] == "NXDOMAIN"
    assert (await dig(ns, "-x", "10.0.1.2"))[0] == "NXDOMAIN"


async def test_services_tasks_srv_through_the_api(lab):
    ns = lab.ns_client
    ctl = [os.path.join(os.path.dirname(sys.executable), "meshnetctl"), "--api", lab.api("h2")]
    create = [
        "service",
        "create",
        "api",
        "--network",
        "frontend",
        "--endpoint",
        "api1",
        "--endpoint",
        "e-api2",
    ]
    res = await trio.run_process([*ctl, *create, "--port", "http:8080/tcp"], capture_stdout=True, check=False)
    assert res.returncode == 0, res
    # api1 lives on h1: h1 writes its task entry after seeing the spec; wait for both tasks
    want = ["api A 10.0.1.5", "api A 10.0.1.6"]
    with trio.fail_after(10):
        while (await dig(ns, "api"))[1] != want:
            await trio.sleep(0.1)
    assert await dig(ns, "tasks.api") == ("NOERROR", ["tasks.api A 10.0.1.5", "tasks.api A 10.0.1.6"])
    status, srv = await dig(ns, "_http._tcp.api", "SRV")
    assert status == "NOERROR"
    assert srv == ["_http._tcp.api SRV 0 0 8080 api1.frontend.", "_http._tcp.api SRV 0 0 8080 api2.frontend."]
    status, listing = await api_request(lab.api("h1"), "GET", "/v1/services")
    (svc,) = listing["services"]
    assert (svc["name"], svc["network_name"], [t["name"] for t in svc["tasks"]]) == (
        "api",
        "frontend",
        ["api1", "api2"],
    )
    assert {t["host"] for t in svc["tasks"]} == {"h1", "h2"}
    status, _ = await api_request(lab.api("h1"), "POST", "/v1/services", {"name": "api", "network": FRONT})
    assert status == 409
    res = await trio.run_process([*ctl, "service", "ls"], capture_stdout=True, check=False)
    assert res.returncode == 0 and b"api1@h1,api2@h2" in res.stdout and b"http:8080/tcp" in res.stdout, res
    res = await trio.run_process([*ctl, "dns"], capture_stdout=True, check=False)
    assert res.returncode == 0 and b"127.0.0.11:53" in res.stdout and b"frontend" in res.stdout, res
    status, _ = await api_request(lab.api("h1"), "DELETE", "/v1/services/api")
    assert status == 200
    await wait_for_answer(ns, "api", "NXDOMAIN")
    # tasks.api is no cluster name any more: it may be a real domain, so it is forwarded (dnsmasq refuses)
    assert (await dig(ns, "tasks.api"))[1] == []
    assert (await dig(ns, "_http._tcp.api", "SRV"))[1] == []
    status, listing = await api_request(lab.api("h2"), "GET", "/v1/services")
    assert listing["services"] == []


async def test_getent_and_the_written_files(lab):
    ns = lab.ns_client
    await wait_for_answer(ns, "web", "NOERROR")
    res = await _in(ns, "getent", "hosts", "web")
    assert res.returncode == 0 and res.stdout.split()[0] == b"10.0.1.2", res
    res = await _in(ns, "getent", "hosts", "web.frontend")
    assert res.returncode == 0 and res.stdout.split()[0] == b"10.0.1.2", res
    res = await _in(ns, "getent", "hosts", "www")
    assert res.returncode == 0 and res.stdout.split()[0] == b"10.0.1.2", res
    # the sandbox's own name comes from its hosts file
    hosts = Path(f"/etc/netns/{ns}/hosts").read_text()
    assert "10.0.1.9\tclient" in hosts
    resolv = Path(f"/etc/netns/{ns}/resolv.conf").read_text()
    assert "nameserver 127.0.0.11" in resolv and "ndots:0" in resolv
    res = await _in(ns, "cat", "/etc/resolv.conf")
    assert b"nameserver 127.0.0.11" in res.stdout
    # the sandbox goes: its resolver stops and its files are removed
    lab.boxes["h2"].remove("sb-client")
    with trio.fail_after(10):
        while os.path.exists(f"/etc/netns/{ns}"):
            await trio.sleep(0.05)
    assert lab.dns["h2"].stats()["sandboxes"] == 0
    assert (await dig(ns, "web"))[0] == "TIMEOUT"  # nothing listens on 127.0.0.11 any more


async def test_forwarding_parallel_upstreams_and_the_limit(lab):
    ns = lab.ns_client
    before = lab.drain_silent()
    # external names go to both upstreams at once; dnsmasq answers, the silent one swallows its copy
    assert await dig(ns, "ext.example.test") == ("NOERROR", ["ext.example.test A 192.0.2.7"])
    assert await dig(ns, "also.example.test", "+tcp") == ("NOERROR", ["also.example.test A 192.0.2.8"])
    with trio.fail_after(5):
        while lab.drain_silent() < before + 1:  # the UDP query (TCP to the silent one is refused)
            await trio.sleep(0.05)
    # A big answer: dnsmasq truncates it for UDP (512 bytes); the client takes 4096, so the resolver asks
    # dnsmasq again over TCP and the client gets all 60 records over UDP, without TC.
    stats = lab.dns["h2"]._boxes["sb-client"].resolver.stats
    retries = stats.tcp_retries
    res = await _in(
        ns,
        "dig",
        "@127.0.0.11",
        "+time=2",
        "+tries=1",
        "+bufsize=4096",
        "+notcp",
        "+ignore",
        "big.example.test",
    )
    assert b"status: NOERROR" in res.stdout and b" tc" not in res.stdout.split(b"flags:")[1].split(b";")[0], (
        res
    )
    assert res.stdout.count(b"IN\tA\t192.0.2.") == 60, res.stdout
    assert stats.tcp_retries == retries + 1
    # the same name to a client that takes only 512 bytes: the resolver passes TC on (the client retries)
    res = await _in(ns, "dig", "@127.0.0.11", "+time=2", "+tries=1", "+noedns", "+ignore", "big.example.test")
    assert b" tc" in res.stdout.split(b"flags:")[1].split(b";")[0], res
    # EDNS0 passes through (dnsmasq answers with an OPT record to a query that had one)
    res = await _in(ns, "dig", "@127.0.0.11", "+time=2", "+tries=1", "+edns=0", "ext.example.test")
    assert b"OPT PSEUDOSECTION" in res.stdout and b"192.0.2.7" in res.stdout
    # More concurrent forwards than the limit: every query is answered; those over the limit are REFUSED
    # at once (counted), those under it get SERVFAIL at the forward timeout (nobody answers *.slow.test).
    n = 4 * LIMIT
    script = textwrap.dedent(
        f"""
        import json, socket, struct, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(4.0)
        def q(i):
            name = b"".join(bytes([len(p)]) + p for p in (b"n%d" % i, b"slow", b"test")) + b"\\0"
            return struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
        for i in range({n}):
            s.sendto(q(i), ("127.0.0.11", 53))
        rcodes = {{}}
        try:
            while len(rcodes) < {n}:
                data = s.recv(4096)
                rcodes[struct.unpack("!H", data[:2])[0]] = data[3] & 15
        except socket.timeout:
            pass
        print(json.dumps(rcodes))
        """
    )
    refused_before = stats.refused_over_limit
    res = await _in(ns, sys.executable, "-c", script, timeout=15)
    rcodes = json.loads(res.stdout)
    assert len(rcodes) == n, res  # nothing dropped silently
    refused = sum(1 for r in rcodes.values() if r == 5)
    servfail = sum(1 for r in rcodes.values() if r == 2)
    assert refused == n - LIMIT and servfail == LIMIT
    assert stats.refused_over_limit - refused_before == n - LIMIT
    status, body = await api_request(lab.api("h2"), "GET", "/v1/dns")
    (box,) = body["sandboxes"]
    assert box["stats"]["refused_over_limit"] >= n - LIMIT and box["listening"] == "127.0.0.11:53"


async def test_a_crashed_resolver_is_restarted_and_the_agent_keeps_running(lab):
    ns = lab.ns_client
    await wait_for_answer(ns, "web", "NOERROR")
    svc = lab.dns["h2"]
    server = svc._boxes["sb-client"].server
    # A bug in the serving code (injected: acting on a forward raises), hit by an external name.
    server._dispatch = lambda out: 1 / 0
    await dig(ns, "ext.example.test")
    with trio.fail_after(10):
        while svc.counters["server_crashes"] == 0:
            await trio.sleep(0.05)
    # restarted after retry_interval (2 s) on a later pass; answers again
    await wait_for_answer(ns, "web", "NOERROR", timeout=15)
    assert svc._boxes["sb-client"].server is not server and svc.counters["servers_started"] == 2
    assert lab.nodes["h2"].fatal is None and (await dig(lab.ns_web, "client"))[1] == ["client A 10.0.1.9"]
