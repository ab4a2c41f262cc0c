"""The ``cnm`` service in the runtime: in-process agents (gossip, NetworkDB, IPAM, CNM) over loopback, each
with a ``MemoryDataplane``. Networks and endpoints replicate through NetworkDB; each host programs its
own overlay; every API error and every injected step failure leaves nothing behind."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from meshnet.dataplane import MemoryDataplane
from meshnet.ipam.config import fast as ipam_fast
from meshnet.runtime import Node
from meshnet.runtime.cnm_svc import CnmService, vxlan_local
from meshnet.runtime.db import DbSettings
from meshnet.runtime.ipam_svc import IpamService
from tests.shell.ndb_helpers import FAST, NDB, api_request

#: Every wait below: gossip join and NetworkDB spread on loopback take well under a second each.
WAIT = 20.0


class RecordingDataplane(MemoryDataplane):
    """A ``MemoryDataplane`` that keeps the scope of every ``observe`` (what a reconcile pass looked at)."""

    def __init__(self) -> None:
        super().__init__()
        self.observed: list[tuple[str, ...]] = []

    def observe(self, scope: Any) -> Any:
        scope = tuple(scope)
        self.observed.append(scope)
        return super().observe(scope)


class Host:
    def __init__(self, name: str, ip: str, tmp: Path) -> None:
        self.name = name
        self.ip = ip
        self.state = str(tmp / f"{name}.state")
        self.api = str(tmp / f"{name}.sock")
        self.dp = RecordingDataplane()
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
    await until(
        lambda: all(len([m for m in h.node.members() if m.state == "alive"]) == n for h in hosts), "members"
    )
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
        await until(lambda: any(n.name == "web" for n in c.cnm.ctl.networks()), "network record on c")
        status, body = await b.call("POST", "/v1/attach", {"network": "web", "sandbox": "c1"})
        assert status == 201, body
        ep_b = body["endpoint"]
        status, body = await c.call(
            "POST", "/v1/attach", {"network": "web", "sandbox": "c2", "aliases": ["db"]}
        )
        assert status == 201, body
        ep_c = body["endpoint"]
        assert ep_b["ipv4"] != ep_c["ipv4"] and ep_b["ipv4"].startswith("10.9.0.")
        assert body["sandbox"]["endpoints"][0]["ifname"] == "eth0"
        ov_b, ov_c = f"h2-ov-{vni}", f"h3-ov-{vni}"
        await until(lambda: fdb(b).get(ov_b) == {(ep_c["mac"], c.ip)}, "b's FDB entry for c's container")
        # c's records changed one table on b: that pass observed b's overlay namespace of the network only,
        # not b's sandboxes (a change costs what it touches; the slow timer's full pass repairs drift).
        assert (ov_b,) in b.dp.observed, b.dp.observed
        await until(lambda: fdb(c).get(ov_c) == {(ep_b["mac"], b.ip)}, "c's FDB entry for b's container")
        assert neigh(b)[ov_b] == {(ep_c["ipv4"], ep_c["mac"])}
        assert neigh(c)[ov_c] == {(ep_b["ipv4"], ep_b["mac"])}
        # c's address was new on b's existing vxlan0 while b's c1 was plugged: one ARP kick (a permanent
        # entry written and deleted in h2-sb-c1), which leaves no neighbour entry in the container.
        assert b.cnm.counters["arp_kicks"] == 1 and b.cnm.counters["arp_kick_errors"] == 0
        assert b.dp.snapshot().get("h2-sb-c1").neighbours == ()
        await trio.sleep(1.5)  # a slow-timer pass (reconcile_interval 1 s): nothing is kicked again
        assert b.cnm.counters["arp_kicks"] == 1 and b.cnm.counters["reconciles"] >= 2
        assert fdb(a) == {}  # no local endpoint on a: no overlay namespace there
        # b's container side: eth0 with the endpoint's MAC and address in h2-sb-c1, its veth on br0.
        snap = b.dp.snapshot()
        eth0 = snap.link("h2-sb-c1", "eth0")
        assert (
            eth0 is not None
            and eth0.mac == ep_b["mac"]
            and eth0.up
            and eth0.mtu == snap.link(ov_b, "br0").mtu
        )
        assert {x.cidr for x in snap.get("h2-sb-c1").addresses} == {ep_b["ipv4"] + "/24"}
        assert snap.link(ov_b, "vxlan0").vni == vni
        # b's data address 127.0.8.72 is local (127.0.0.0/8 on lo): VXLAN leaves from it.
        assert b.cnm.vxlan_local == "127.0.8.72" and snap.link(ov_b, "vxlan0").local == "127.0.8.72"
        # Every host lists both endpoints; c's inspect of the network shows them with hosts.
        status, body = await c.call("GET", "/v1/networks/web")
        assert status == 200 and {(e["name"], e["host"]) for e in body["endpoints"]} == {
            ("c1", "h2"),
            ("c2", "h3"),
        }
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


async def fingerprint(h: Host) -> Any:
    """Everything an operation on ``h`` could leave behind: kernel, sandboxes (memory and file), the CNM
    tables as ``h`` sees them, and IPAM's free counts."""
    core = h.node.db.core
    tables = sorted(
        (e.network, e.table, e.key, e.value, e.deleted)
        for net in core.networks()
        for table in ("networks", "endpoint_table")
        for e in core.walk_table(table, net)
    )
    status, ipam = await h.call("GET", "/v1/ipam")
    assert status == 200
    # Addresses of the networks that exist (IPAM keeps a deleted network's VNI and blocks: its
    # delete_network is a no-op, docs/agent-services.md section 1).
    nets = {e.key for e in core.walk_table("networks", "")}
    blocks = sorted(
        (b["network"], b["block"], b["owner"], b["free"]) for b in ipam["blocks"] if b["network"] in nets
    )
    saved = Path(h.state, "sandboxes.json")
    # Bridge-side veth and VXLAN devices get kernel-chosen MACs whenever they are made again.
    kernel = re.sub(r"(link (?:ve-\S+|vxlan0) .*?address )\S+", r"\1*", h.dp.dump())
    return (kernel, h.cnm.ctl.sandboxes(), saved.read_text() if saved.exists() else None, tables, blocks)


async def settled(h: Host) -> None:
    """Let ``h``'s reconcile loop and NetworkDB catch up (a few gossip intervals)."""
    await trio.sleep(0.02)


@pytest.mark.hang_guard(120)
async def test_api_errors_answer_with_code_and_change_nothing(tmp_path):
    async with trio.open_nursery() as nursery:
        a, b = await cluster(nursery, tmp_path, n=2)
        assert (await a.call("POST", "/v1/networks", {"name": "web", "subnet": "10.9.0.0/24"}))[0] == 201
        status, att = await a.call(
            "POST", "/v1/attach", {"network": "web", "sandbox": "c1", "ip": "10.9.0.5"}
        )
        assert status == 201, att
        await until(lambda: any(n.name == "web" for n in b.cnm.ctl.networks()), "web on b")
        status, att_b = await b.call("POST", "/v1/attach", {"network": "web", "sandbox": "cb"})
        assert status == 201, att_b
        await until(lambda: len(a.cnm.ctl.endpoints()) == 2, "b's endpoint on a")
        # ... as joined (its record is written again by the join, after its creation, which alone is
        # enough for the FDB entries below): the baseline must not change under the checks.
        await until(
            lambda: any(e.name == "cb" and e.sandbox for e in a.cnm.ctl.endpoints()), "cb joined on a"
        )
        await until(
            lambda: sum(map(len, fdb(a).values())) == 1 and sum(map(len, fdb(b).values())) == 1, "FDBs"
        )
        await settled(a)
        before = await fingerprint(a)
        cases = [
            ("POST", "/v1/networks", {}, 400, "invalid"),
            ("POST", "/v1/networks", {"name": "x", "encrypted": True}, 400, "not_supported"),
            ("POST", "/v1/networks", {"name": "web"}, 409, "conflict"),
            ("POST", "/v1/networks", {"name": "y", "subnet": "10.0.0.1/24"}, 400, "invalid"),
            ("POST", "/v1/networks", {"name": "y", "bogus": 1}, 400, "invalid"),
            ("POST", "/v1/networks", {"name": "bad name"}, 400, "invalid"),
            ("POST", "/v1/endpoints", {"network": "nope", "name": "e"}, 404, "not_found"),
            ("POST", "/v1/endpoints", {"network": "web", "name": "e", "ip": "10.99.0.5"}, 400, "invalid"),
            ("POST", "/v1/endpoints", {"network": "web", "name": "c1"}, 409, "conflict"),
            ("POST", "/v1/attach", {"network": "web", "sandbox": "bad name!"}, 400, "invalid"),
            ("POST", "/v1/attach", {"network": "nope", "sandbox": "s"}, 404, "not_found"),
            ("POST", "/v1/attach", {"network": "web", "sandbox": "s", "ip": "10.9.0.5"}, 409, "in_use"),
            ("POST", "/v1/sandboxes", {"name": "s", "netns": "/nonexistent/ns"}, 400, "invalid"),
            ("POST", "/v1/sandboxes", {"name": "c1"}, 409, "conflict"),
            ("POST", "/v1/sandboxes/nope/join", {"endpoint": "c1"}, 404, "not_found"),
            ("POST", "/v1/sandboxes/c1/join", {"endpoint": "c1"}, 409, "in_use"),
            ("POST", "/v1/sandboxes/c1/leave", {"endpoint": "cb"}, 409, "not_local"),
            ("DELETE", "/v1/networks/web", None, 409, "in_use"),
            ("DELETE", "/v1/endpoints/c1", None, 409, "in_use"),
            ("DELETE", "/v1/endpoints/cb", None, 409, "not_local"),
            ("DELETE", "/v1/sandboxes/nope", None, 404, "not_found"),
            ("GET", "/v1/networks/nope", None, 404, "not_found"),
            ("PUT", "/v1/networks", None, 405, "method_not_allowed"),
            ("POST", "/v1/networks", "not json", 400, "bad_request"),
        ]
        for method, path, body, want_status, want_code in cases:
            if body == "not json":
                from tests.shell.ndb_helpers import api_request as raw_request

                status, answer = await raw_request(a.api, method, path, raw=b"{nope")
            else:
                status, answer = await a.call(method, path, body)
            assert status == want_status, (method, path, body, answer)
            assert set(answer) == {"code", "message"} and answer["message"], answer
            if want_code is not None:
                assert answer["code"] == want_code, (method, path, answer)
        await settled(a)
        assert await fingerprint(a) == before
        nursery.cancel_scope.cancel()


async def _run_op(h: Host, op: str, ctx: dict[str, Any]) -> tuple[int, Any]:
    if op == "network_create":
        return await h.call("POST", "/v1/networks", {"name": "extra", "subnet": "10.8.0.0/24"})
    if op == "network_delete":
        return await h.call("DELETE", "/v1/networks/spare")
    if op == "attach":
        return await h.call("POST", "/v1/attach", {"network": "web", "sandbox": "s1", "aliases": ["x"]})
    if op == "endpoint_create":
        return await h.call("POST", "/v1/endpoints", {"network": "web", "name": "e1"})
    if op == "endpoint_delete":
        return await h.call("DELETE", "/v1/endpoints/lone")
    if op == "join":
        return await h.call("POST", "/v1/sandboxes/c0/join", {"endpoint": "lone2"})
    if op == "leave":
        return await h.call("POST", "/v1/sandboxes/c2/leave", {"endpoint": "c2"})
    if op == "sandbox_delete":
        return await h.call("DELETE", "/v1/sandboxes/c2")
    raise AssertionError(op)


BUILD = {
    "network_create": lambda c: c.create_network(name="extra", subnet="10.8.0.0/24", now=0.0),
    "network_delete": lambda c: c.delete_network("spare"),
    "attach": lambda c: c.attach(network="web", sandbox="s1", aliases=["x"], now=0.0),
    "endpoint_create": lambda c: c.create_endpoint(network="web", name="e1"),
    "endpoint_delete": lambda c: c.delete_endpoint("lone"),
    "join": lambda c: c.join("c0", "lone2"),
    "leave": lambda c: c.leave("c2", "c2"),
    "sandbox_delete": lambda c: c.delete_sandbox("c2"),
}
OPS = [
    "network_create",
    "attach",
    "endpoint_create",
    "join",
    "leave",
    "endpoint_delete",
    "sandbox_delete",
    "network_delete",
]


@pytest.mark.hang_guard(240)
async def test_a_failure_at_any_step_of_any_operation_leaves_nothing_behind(tmp_path):
    async with trio.open_nursery() as nursery:
        a, b = await cluster(nursery, tmp_path, n=2)
        for body in ({"name": "web", "subnet": "10.9.0.0/24"}, {"name": "spare", "subnet": "10.7.0.0/24"}):
            assert (await a.call("POST", "/v1/networks", body))[0] == 201
        for sandbox in ("c1", "c2"):
            assert (await a.call("POST", "/v1/attach", {"network": "web", "sandbox": sandbox}))[0] == 201
        assert (await a.call("POST", "/v1/sandboxes", {"name": "c0"}))[0] == 201  # on no network yet
        for name in ("lone", "lone2"):
            assert (await a.call("POST", "/v1/endpoints", {"network": "web", "name": name}))[0] == 201
        await until(lambda: any(n.name == "web" for n in b.cnm.ctl.networks()), "web on b")
        assert (await b.call("POST", "/v1/attach", {"network": "web", "sandbox": "cb"}))[0] == 201
        await until(lambda: len(a.cnm.ctl.endpoints()) == 5, "b's endpoint on a")
        # ... as joined (its record is written again by the join, after its creation, which alone is
        # enough for the FDB entries below): the baseline must not change under the checks.
        await until(
            lambda: any(e.name == "cb" and e.sandbox for e in a.cnm.ctl.endpoints()), "cb joined on a"
        )
        # Every host programmed every remote endpoint, joined or not (a: cb; b: c1, c2, lone, lone2),
        # before the baseline.
        await until(
            lambda: sum(map(len, fdb(a).values())) == 1 and sum(map(len, fdb(b).values())) == 4, "FDBs"
        )
        await settled(a)
        checked = 0
        for op in OPS:
            before_a = await fingerprint(a)
            before_b = b.dp.dump()
            built = BUILD[op](a.cnm.ctl)  # pure: building an operation changes nothing
            steps = [f"{built.kind}:{name}" for name in built.step_names()]
            assert built.kind == op and len(steps) >= 2, steps
            for step in steps:
                a.cnm.fail_step = step
                status, body = await _run_op(a, op, {})
                a.cnm.fail_step = None
                assert (status, body["code"]) == (500, "injected"), (step, status, body)
                assert a.cnm.step_log == steps
                await settled(a)
                assert await fingerprint(a) == before_a, f"a failure at {step} left something behind"
                await until(
                    lambda want=before_b: b.dp.dump() == want, f"b unchanged after a failure at {step}", 5.0
                )
                checked += 1
        for op in OPS:  # and each succeeds without an injected failure
            status, body = await _run_op(a, op, {})
            assert status in (200, 201), (op, body)
        assert checked >= 25
        nursery.cancel_scope.cancel()


async def ctl(h: Host, *argv: str) -> tuple[int, str, str]:
    """``meshnetctl --api H ARGV`` in a worker thread (it blocks): exit code, stdout, stderr."""
    import contextlib
    import io

    from meshnet import ctl as ctl_mod

    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return ctl_mod.main(["--api", h.api, *argv])
            except SystemExit as exc:  # argparse
                return int(exc.code or 0)

    code = await trio.to_thread.run_sync(run)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.hang_guard(120)
async def test_meshnetctl_network_endpoint_sandbox_attach(tmp_path):
    import json

    async with trio.open_nursery() as nursery:
        (a,) = await cluster(nursery, tmp_path, n=1)
        code, out, _ = await ctl(a, "network", "create", "web", "--subnet", "10.9.0.0/24", "--label", "env=t")
        assert code == 0 and "network web (VNI" in out, out
        code, out, _ = await ctl(a, "network", "ls")
        assert code == 0 and out.splitlines()[0].split() == ["ID", "NAME", "VNI", "SUBNETS", "CREATOR"]
        assert "web" in out and "10.9.0.0/24" in out
        code, out, _ = await ctl(
            a, "attach", "--network", "web", "--sandbox", "c1", "--alias", "db", "--ip", "10.9.0.7"
        )
        assert code == 0 and "eth0 10.9.0.7 02:42:0a:09:00:07" in out, out
        code, out, _ = await ctl(a, "network", "create", "db", "--subnet", "10.8.0.0/24")
        assert code == 0, out
        code, out, _ = await ctl(a, "endpoint", "create", "--network", "db", "e2")
        assert code == 0 and "endpoint e2" in out
        code, out, _ = await ctl(a, "sandbox", "join", "c1", "e2")
        assert code == 0 and "joined sandbox c1" in out, out
        code, out, _ = await ctl(a, "sandbox", "ls", "--json")
        body = json.loads(out)
        assert [e["ifname"] for e in body["sandboxes"][0]["endpoints"]] == ["eth0", "eth1"]
        code, out, _ = await ctl(a, "endpoint", "ls")
        assert code == 0 and len(out.splitlines()) == 3 and "c1" in out, out
        code, out, _ = await ctl(a, "network", "inspect", "web")
        assert code == 0 and "name: web" in out and "endpoints:" in out
        code, out, _ = await ctl(a, "sandbox", "inspect", "c1")
        assert code == 0 and "netns: h1-sb-c1" in out
        # Exit codes: 1 not found / conflict, 2 refused as invalid.
        code, _, err = await ctl(a, "network", "inspect", "nope")
        assert code == 1 and "404 not_found" in err
        code, _, err = await ctl(a, "network", "rm", "web")
        assert code == 1 and "409 in_use" in err
        code, _, err = await ctl(a, "network", "create", "x", "--encrypted")
        assert code == 2 and "not supported" in err
        code, _, err = await ctl(a, "network", "create", "y", "--label", "novalue")
        assert code == 2 and "KEY=VALUE" in err
        code, _, err = await ctl(a, "attach", "--network", "web")
        assert code == 2  # argparse: --sandbox is required
        code, out, _ = await ctl(a, "sandbox", "leave", "c1", "e2")
        assert code == 0 and "left sandbox c1" in out
        code, out, _ = await ctl(a, "endpoint", "rm", "e2")
        assert code == 0 and "removed endpoint e2" in out
        code, out, _ = await ctl(a, "sandbox", "rm", "c1")
        assert code == 0 and "removed sandbox c1 and its 1 endpoints" in out
        code, out, _ = await ctl(a, "network", "rm", "web")
        assert code == 0 and "removed network web" in out
        code, out, _ = await ctl(a, "network", "rm", "db")
        assert code == 0 and "removed network db" in out
        assert a.dp.namespaces() == ()
        nursery.cancel_scope.cancel()


@pytest.mark.hang_guard(120)
async def test_a_crashed_and_restarted_agent_adopts_its_sandboxes_without_touching_the_kernel(tmp_path):
    async with trio.open_nursery() as nursery:
        a, b = await cluster(nursery, tmp_path, n=2)
        assert (await a.call("POST", "/v1/networks", {"name": "web", "subnet": "10.9.0.0/24"}))[0] == 201
        assert (await a.call("POST", "/v1/attach", {"network": "web", "sandbox": "c1"}))[0] == 201
        await until(lambda: any(n.name == "web" for n in b.cnm.ctl.networks()), "web on b")
        status, att_b = await b.call("POST", "/v1/attach", {"network": "web", "sandbox": "c2"})
        assert status == 201, att_b
        mac_b = att_b["endpoint"]["mac"]
        ov = f"h1-ov-{(await a.call('GET', '/v1/networks/web'))[1]['vni']}"
        await until(lambda: (mac_b, b.ip) in fdb(a).get(ov, set()), "a's FDB entry for c2")
        await until(
            lambda: len(b.cnm.ctl.host_view().endpoints) == 2 and not b.cnm.counters["reconcile_errors"],
            "b settled",
        )
        await trio.sleep(0.3)
        kernel_b, plan_b = b.dp.dump(), b.dp.last_plan
        assert b.scope is not None
        b.scope.cancel()  # a crash: no leave
        await until(
            lambda: {m.name: m.state for m in a.node.members()}.get("h2") == "dead", "a to see b failed"
        )
        # b's entries are hidden on a, not deleted: its container keeps its FDB entry (the kernel still works).
        await trio.sleep(1.5)
        assert (mac_b, b.ip) in fdb(a)[ov]
        # The same kernel and state directory, a new agent: it adopts c2 and applies nothing.
        await b.start(nursery, [a.node.bound_addr], seed=99)
        await until(lambda: {m.name: m.state for m in a.node.members()}.get("h2") == "alive", "b back")
        assert [s.name for s in b.cnm.ctl.sandboxes()] == ["c2"]
        await until(lambda: b.cnm.counters["reconciles"] >= 3, "b's reconcile loop")
        await until(lambda: not b.cnm._settling(), "b settled after the restart")
        await trio.sleep(0.3)
        assert b.dp.last_plan is plan_b, b.dp.last_plan  # not a single op since the crash
        assert b.dp.dump() == kernel_b
        status, body = await b.call("POST", "/v1/attach", {"network": "web", "sandbox": "c3"})
        assert status == 201, body  # and it works as before
        nursery.cancel_scope.cancel()


async def test_a_custom_gateway_is_kept_and_never_allocated(tmp_path):
    async with trio.open_nursery() as nursery:
        a, b = await cluster(nursery, tmp_path, n=2)
        body = {"name": "gw", "subnet": "10.31.0.0/28", "gateway": "10.31.0.14"}
        status, net = await a.call("POST", "/v1/networks", body)
        assert status == 201, net
        assert net["subnets"] == [{"subnet": "10.31.0.0/28", "gateway": "10.31.0.14"}]
        await until(lambda: any(n.name == "gw" for n in b.cnm.ctl.networks()), "network record on b")
        got = set()
        for i in range(13):  # 16 addresses - network - broadcast - the gateway
            status, att = await (a, b)[i % 2].call(
                "POST", "/v1/attach", {"network": "gw", "sandbox": f"s{i}"}
            )
            assert status == 201, att
            got.add(att["endpoint"]["ipv4"])
        assert "10.31.0.14" not in got and len(got) == 13  # the default gateway .1 is an ordinary address
        assert "10.31.0.1" in got
        status, err = await a.call("POST", "/v1/attach", {"network": "gw", "sandbox": "s99"})
        assert status == 507 and err["code"] == "exhausted", err
        # The bridge of the network's overlay namespace carries the custom gateway.
        snap = a.dp.snapshot()
        ov = next(ns for ns in snap.namespaces if ns.startswith("h1-ov-"))
        assert any(ad.dev == "br0" and ad.cidr == "10.31.0.14/28" for ad in snap.get(ov).addresses), snap.get(
            ov
        )
        nursery.cancel_scope.cancel()


def test_the_data_address_is_vxlan_local_only_when_it_is_an_address_of_this_host():
    assert vxlan_local("127.0.8.72")[0] == "127.0.8.72"
    # A NATed advertise address (TEST-NET-1, on no interface here): no local, and the reason says so.
    local, why = vxlan_local("192.0.2.77")
    assert local is None and "not an address of this host" in why
    local, why = vxlan_local("fd00::77")
    assert local is None and "IPv6" in why
