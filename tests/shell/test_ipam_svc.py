"""IpamService in the trio runtime (meshnet/runtime/ipam_svc.py): state files, write-ahead order,
restart with state, remote grants over NetworkDB requests, the /v1/ipam API and its errors, and the
CLI's table. Real Nodes over loopback (127.0.8.14x) in one process, as the NetworkDB shell tests."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from meshnet import ctl
from meshnet.core.errors import ApiError, ConfigError, LocalProtocolError
from meshnet.ctl_ipam import format_blocks, runs
from meshnet.ipam import Conflict, Exhausted, InUse, Persist, ReclaimRefused, Unknown, Unreachable
from meshnet.ipam.records import NodeRecord, encode_node
from meshnet.runtime import Node
from meshnet.runtime.db import DbSettings
from meshnet.runtime.ipam_svc import (
    FRAME_PREFIX,
    IpamService,
    IpamStore,
    decode_request,
    encode_requests,
    identity_host,
    ipam_api_error,
)
from tests.shell.ndb_helpers import FAST, NDB, api_request

NET = "0123456789abcdef01234567"


# ---------------------------------------------------------------------- state files


def _persist(seq: int, *records: tuple[Any, Any]) -> Persist:
    return Persist(seq, tuple(records))


def test_store_round_trip_torn_tail_damage_compaction_and_move_aside(tmp_path: Path):
    store = IpamStore(str(tmp_path / "ipam"))
    assert store.load() == {}
    store.append([_persist(1, (("a",), 1), (("b", "x", 2), {"k": (1, 2)}))])
    batch = [_persist(2, (("a",), None), (("c",), "v")), _persist(3, (("c",), "w"))]
    store.append(batch, IpamStore.encode(batch))
    # Durable when the write returns (the write-ahead rule): the log descriptor is O_DSYNC.
    assert fcntl.fcntl(store._log_fd, fcntl.F_GETFL) & os.O_DSYNC
    store.close()
    expected = {("b", "x", 2): {"k": (1, 2)}, ("c",): "w"}
    again = IpamStore(store.path)
    assert again.load() == expected and again.log_frames == 3
    again.close()
    # A crash in the middle of an append leaves a torn last frame: ignored and cut off.
    log = Path(store.path) / IpamStore.LOG
    size = log.stat().st_size
    with open(log, "ab") as fh:
        fh.write(b"\x00\x00\x01\x00garbage")
    torn = IpamStore(store.path)
    assert torn.load() == expected and log.stat().st_size == size
    torn.close()
    # Damage before the last frame refuses the start, naming the file.
    data = bytearray(log.read_bytes())
    data[10] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="ipam.log"):
        IpamStore(store.path).load()
    # Compaction: the snapshot holds everything, the log is gone.
    fresh = IpamStore(str(tmp_path / "ipam2"))
    fresh.load()
    fresh.append([_persist(i, (("n", i), i)) for i in range(1, 50)])
    fresh.compact()
    assert not (Path(fresh.path) / IpamStore.LOG).exists()
    fresh.append([_persist(50, (("n", 1), None))])
    fresh.close()
    reread = IpamStore(fresh.path)
    assert reread.load() == {("n", i): i for i in range(2, 50)}
    aside = reread.move_aside()
    assert aside.endswith("ipam2.retired-1") and os.listdir(aside)
    assert reread.load() == {} and os.listdir(reread.path) == []


def test_api_error_mapping():
    cases = [
        (Exhausted("x"), 507, "exhausted"),
        (Unreachable("x"), 503, "unreachable"),
        (Unknown("x"), 503, "unknown"),
        (InUse("x"), 409, "in_use"),
        (Conflict("x"), 409, "conflict"),
        (ReclaimRefused("x"), 409, "reclaim_refused"),
        (LocalProtocolError("bad address"), 400, "invalid"),
    ]
    for err, status, code in cases:
        api = ipam_api_error(err)
        assert isinstance(api, ApiError) and (api.status, api.code) == (status, code)
        assert str(err) in api.message


def test_messages_for_one_identity_are_batched_below_the_request_limit_with_both_names():
    src, dst = "a~0000000a", "b~0000000b"
    (one,) = encode_requests([b"one"], 100, src=src, dst=dst)
    assert one.startswith(FRAME_PREFIX) and decode_request(one) == (src, dst, [b"one"])
    payloads = [bytes([i]) * (10 + i) for i in range(40)]
    requests = encode_requests(payloads, 200, src=src, dst=dst)
    assert len(requests) > 1 and all(len(r) <= 200 for r in requests)
    decoded = [decode_request(r) for r in requests]
    assert all(d[:2] == (src, dst) for d in decoded)
    assert [p for d in decoded for p in d[2]] == payloads  # order kept
    huge = encode_requests([b"x" * 500, b"y"], 200, src=src, dst=dst)
    assert [decode_request(r)[2] for r in huge] == [[b"x" * 500], [b"y"]]
    # Not IPAM's, the old framings without names, or malformed: None (counted, never raised).
    head = FRAME_PREFIX + b"\x00\x01a\x00\x01b"
    for bad in (
        b"other",
        b"ipam\x00" + b"payload",
        b"ipam\x01\x00\x00\x00\x01x",
        FRAME_PREFIX,
        head,
        head + b"\x00\x00\x00\x09abc",
        FRAME_PREFIX + b"\x00\x09ab",
        FRAME_PREFIX + b"\x00\x01\xff\x00\x01b\x00\x00\x00\x01x",
    ):
        assert decode_request(bad) is None, bad
    # Identity names: HOST~ + 8 hex digits; anything else (an identity made before) is its own host.
    assert identity_host("h1~0badf00d") == "h1" and identity_host("a~b~0badf00d") == "a~b"
    assert (
        identity_host("h1") == "h1"
        and identity_host("h1~xyz") == "h1~xyz"
        and identity_host("~0badf00d") == "~0badf00d"
    )


def test_ls_table_merges_runs_of_blocks():
    def row(k: int, owner: str, free: int = 16) -> dict[str, Any]:
        return {
            "network": NET,
            "space": "10.9.0.0/24",
            "block": k,
            "first": f"10.9.0.{16 * k}",
            "last": f"10.9.0.{16 * k + 15}",
            "owner": owner,
            "owner_identity": f"{owner}~0000000{owner}",
            "epoch": 1,
            "state": "held",
            "free": free,
            "owner_state": "self" if owner == "a" else "alive",
        }

    blocks = [row(0, "a", 13), row(1, "a"), row(2, "b"), row(3, "a")]
    merged = runs(blocks)
    assert [(r["block"], r["block_last"], r["free"]) for r in merged] == [(0, 1, 29), (2, 2, 16), (3, 3, 16)]
    lines = format_blocks(blocks).splitlines()
    assert lines[0].split() == [
        "NETWORK",
        "SPACE",
        "BLOCKS",
        "RANGE",
        "OWNER",
        "OWNER",
        "STATE",
        "EPOCH",
        "STATE",
        "FREE",
        "IDENTITY",
    ]
    assert lines[1].split() == [
        NET,
        "10.9.0.0/24",
        "0-1",
        "10.9.0.0-10.9.0.31",
        "a",
        "self",
        "1",
        "held",
        "29",
        "a~0000000a",
    ]
    assert len(format_blocks(blocks, merge=False).splitlines()) == 5


# ---------------------------------------------------------------------- in the runtime


class GatedStore(IpamStore):
    """The real store behind a gate: ``closed`` appends wait (a slow disk) until opened."""

    gate = threading.Event()

    def append(self, batch, data=None):
        assert self.gate.wait(timeout=30)
        super().append(batch, data)


class Cluster:
    def __init__(self, nursery: trio.Nursery, tmp: Path) -> None:
        self.nursery, self.tmp = nursery, tmp
        self.nodes: dict[str, Node] = {}
        self.svcs: dict[str, IpamService] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.ports: dict[str, int] = {}

    async def start(self, name: str, ip: str, *, join: str | None = None, **svc_kw: Any) -> IpamService:
        prev = self.nodes.get(name)
        if prev is not None:
            with trio.fail_after(10):
                await prev.wait_stopped()
        svc = IpamService(**svc_kw)
        seeds = [self.nodes[join].bound_addr] if join else []
        node = Node(
            FAST,
            name=name,
            bind=(ip, self.ports.get(name, 0)),
            seeds=seeds,
            networkdb=DbSettings(config=NDB, state_dir=str(self.tmp / f"{name}.state")),
            services=[svc],
        )

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                self.scopes[name] = scope
                await node.run(api_path=str(self.tmp / f"{name}.sock"), task_status=task_status)

        await self.nursery.start(run)
        self.nodes[name], self.svcs[name], self.ports[name] = node, svc, node.bound_addr[1]
        return svc

    def kill(self, name: str) -> None:
        self.scopes[name].cancel()


async def wait_for(pred, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


def own_blocks(svc: IpamService, network: str) -> dict[int, int]:
    return {b.block: b.free for b in svc.listing(network) if b.owner_state == "self"}


async def test_allocation_answers_and_publishes_only_after_the_state_is_durable(tmp_path: Path):
    GatedStore.gate.set()
    try:
        await _write_ahead_case(tmp_path)
    finally:
        GatedStore.gate.set()  # never leave a persister thread waiting


async def _write_ahead_case(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp_path)
        a = await c.start("a", "127.0.8.141", store_class=GatedStore)
        cfg = await a.create_network(NET, subnets=["10.9.0.0/24"])
        assert cfg.vni is not None and cfg.creator == a.core.name and a.netcfg(NET) == cfg
        assert identity_host(a.core.name) == "a" and a.core.name.startswith("a~")
        first = await a.allocate(NET, tag="ep1")
        assert first == "10.9.0.2"  # .0 network, .1 gateway
        db = c.nodes["a"].db.core
        before = {e.key: e.value for e in db.walk_table("ipam.block", NET)}

        block0 = ("block", NET, "10.9.0.0/24", 0)

        def idle() -> bool:  # every persist issued so far is on disk
            on_disk = a.store.records.get(block0)
            return (
                a.core.stats()["pending_persists"] == 0 and on_disk is not None and len(on_disk.allocs) == 1
            )

        await wait_for(idle)
        GatedStore.gate.clear()  # the disk stalls
        result: list[str] = []

        async def alloc() -> None:
            result.append(await a.allocate(NET, tag="ep2"))

        nursery.start_soon(alloc)
        await trio.sleep(0.5)
        assert result == [] and a.core.stats()["pending_persists"] == 1
        # Nothing that follows from the decision left the service: no record changed in NetworkDB.
        await trio.sleep(1.2)  # past the core's free-hint interval (1 s)
        assert {e.key: e.value for e in db.walk_table("ipam.block", NET)} == before
        GatedStore.gate.set()
        await wait_for(lambda: result == ["10.9.0.3"])
        nursery.cancel_scope.cancel()


async def test_restart_with_state_resumes_at_once_and_a_joiner_gets_a_block_by_message(tmp_path: Path):
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp_path)
        a = await c.start("a", "127.0.8.143")
        b = await c.start("b", "127.0.8.144", join="a")
        await a.create_network(NET, subnets=["10.9.0.0/24"])
        await wait_for(lambda: b.netcfg(NET) is not None)
        assert not b.needs_network(NET) and not b.needs_network("f" * 24)
        await b.attach(NET)  # the contract's network attach (the hook is attach(node))
        assert b.needs_network(NET) and a.needs_network(NET) and not b.needs_network("f" * 24)
        got = await b.allocate_event(NET, tag="b-ep1")
        assert got.owner == b.core.name and own_blocks(b, NET)  # a whole block was granted to b
        assert b.counters["messages_sent"] >= 1 and a.counters["messages_received"] >= 1
        # Static address in a's block: allocated by a on b's behalf.
        proxy = await b.allocate_event(NET, tag="b-ep2", preferred="10.9.0.7/24")
        assert (proxy.value, proxy.owner) == ("10.9.0.7", a.core.name)
        with pytest.raises(InUse):
            await a.allocate(NET, tag="other", preferred="10.9.0.7")
        with pytest.raises(LocalProtocolError):
            await b.allocate(NET, tag="x", preferred="10.10.0.1")
        mine = own_blocks(b, NET)

        c.kill("b")
        b2 = await c.start("b", "127.0.8.144", join="a")
        assert own_blocks(b2, NET) == mine  # believed before any peer answered
        again = await b2.allocate_event(NET, tag="b-ep1")
        assert (again.value, again.owner) == (got.value, b.core.name)  # the same identity
        await b2.release(NET, got.value, tag="b-ep1")
        await b2.release(NET, got.value, tag="b-ep1")  # a no-op the second time
        nursery.cancel_scope.cancel()


async def test_api_routes_and_errors(tmp_path: Path):
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp_path)
        await c.start("a", "127.0.8.146")
        sock = str(tmp_path / "a.sock")
        status, body = await api_request(
            sock, "POST", "/v1/ipam/networks", {"id": NET, "subnets": ["10.9.0.0/28"]}
        )
        assert status == 201 and body["subnets"][0]["gateway"] == "10.9.0.1" and body["vni"] >= 4096
        status, body = await api_request(sock, "POST", "/v1/ipam/networks", {"id": "bad@id"})
        assert (status, body["code"]) == (400, "invalid")
        assert "bad@id" not in c.nodes["a"].db.core.networks()  # refused before anything was joined
        status, body = await api_request(sock, "GET", f"/v1/ipam/networks/{NET}")
        assert status == 200 and body["network"] == NET
        addrs = []
        for i in range(13):  # a /28: 16 - network - broadcast - gateway
            status, body = await api_request(
                sock, "POST", "/v1/ipam/allocate", {"network": NET, "tag": f"t{i}"}
            )
            assert status == 200 and body["owner"] == "a", body
            addrs.append(body["address"])
        assert len(set(addrs)) == 13
        status, body = await api_request(
            sock, "POST", "/v1/ipam/allocate", {"network": NET, "tag": "one-more"}
        )
        assert (status, body["code"]) == (507, "exhausted"), body
        status, body = await api_request(
            sock, "POST", "/v1/ipam/release", {"network": NET, "address": addrs[0], "tag": "t0"}
        )
        assert status == 200 and body == {"released": True}
        status, body = await api_request(sock, "GET", f"/v1/ipam?network={NET}")
        assert status == 200 and [(b["owner"], b["free"], b["owner_state"]) for b in body["blocks"]] == [
            ("a", 1, "self")
        ]
        status, body = await api_request(sock, "GET", "/v1/ipam?network=-")
        assert {b["space"] for b in body["blocks"]} == {"vni", "pool"}
        # Errors: unknown network, bad bodies, reclaim of a live node, wrong method, unknown path.
        status, body = await api_request(sock, "POST", "/v1/ipam/allocate", {"network": "nope", "tag": "t"})
        assert (status, body["code"]) == (503, "unknown")
        status, body = await api_request(sock, "POST", "/v1/ipam/allocate", {"network": NET})
        assert (status, body["code"]) == (400, "bad_request")
        status, body = await api_request(sock, "POST", "/v1/ipam/allocate", raw=b"[1]")
        assert (status, body["code"]) == (400, "bad_request")
        status, body = await api_request(
            sock, "POST", "/v1/ipam/allocate", {"network": NET, "tag": "t", "preferred": "10.9.0.1"}
        )
        assert (status, body["code"]) == (400, "invalid"), body  # the gateway is reserved
        status, body = await api_request(sock, "POST", "/v1/ipam/reclaim", {"node": "a"})
        assert status == 409 and body["code"] == "reclaim_refused", body
        status, body = await api_request(sock, "GET", "/v1/ipam?network=nope")
        assert (status, body["code"]) == (404, "not_found")
        rc = await trio.to_thread.run_sync(lambda: ctl.main(["--api", sock, "ipam", "ls", "nope"]))
        assert rc == 1
        rc = await trio.to_thread.run_sync(lambda: ctl.main(["--api", sock, "ipam", "reclaim", "a"]))
        assert rc == 1  # refused: a is alive (it is this node)
        rc = await trio.to_thread.run_sync(lambda: ctl.main(["--api", sock, "ipam", "ls", NET]))
        assert rc == 0
        status, body = await api_request(sock, "POST", "/v1/ipam")
        assert status == 405
        status, body = await api_request(sock, "POST", "/v1/ipam/nothing", {})
        assert status == 404
        status, body = await api_request(sock, "GET", "/v1/agent")
        assert body["services"]["ipam"]["latency_ms"]["allocate_local"]["n"] == 13
        nursery.cancel_scope.cancel()


async def test_after_a_graceful_leave_the_same_name_restarts_as_a_new_identity_that_allocates(tmp_path: Path):
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp_path)
        a = await c.start("a", "127.0.8.148")
        b = await c.start("b", "127.0.8.149", join="a")
        await a.create_network(NET, subnets=["10.9.0.0/24"])
        await wait_for(lambda: b.netcfg(NET) is not None)
        await b.attach(NET)
        await wait_for(lambda: bool(own_blocks(b, NET)))
        old = b.core.name
        await c.nodes["b"].leave()  # IpamService.leave first: b's blocks go to a
        c.nodes["b"].stop()
        assert c.svcs["b"].core.is_retired
        await wait_for(lambda: all(r.owner == a.core.name for r in a.listing(NET)))
        b2 = await c.start("b", "127.0.8.149", join="a")
        assert os.path.isdir(tmp_path / "b.state" / "ipam.retired-1")  # the retired state, kept aside
        assert b2.core.name != old and b2.core.identity.host == "b" and b2.core.name.startswith("b~")
        assert not b2.core.is_retired and not b2.core.is_fenced and not own_blocks(b2, NET)
        await b2.attach(NET)
        await wait_for(lambda: any(r.owner_state == "alive" for r in b2.listing(NET)))  # gossip saw a
        got = await b2.allocate_event(NET, tag="b2-ep1")  # was 409 conflict: retired/b fenced the name
        assert got.owner in (a.core.name, b2.core.name)
        # a maps gossip's verdict on b to b's current identity; the retired one stays retired.
        await wait_for(lambda: a.stats()["hosts"].get("b") == b2.core.name)
        await wait_for(
            lambda: any(r.owner == b2.core.name and r.owner_state == "alive" for r in a.listing(NET))
        )
        assert a.core._node_state(old) == "retired"
        # `reclaim b` on a means b's identities that are not running (b is alive: the retired one).
        assert a._reclaim_targets(["b"]) == [old] and a._reclaim_targets([b2.core.name]) == [b2.core.name]
        assert a._reclaim_targets(["a"]) == [a.core.name]  # the core refuses: "cannot reclaim itself"
        # Remote input that lies about identities is counted and dropped: a request from host b in the
        # name of another host's identity, one for an earlier identity of a, records of b naming a.
        nb = c.nodes["b"]
        payload = b"not even decoded"
        for src, dst in (("a~00000001", a.core.name), (b2.core.name, "a~00000002")):
            (req,) = encode_requests([payload], 1000, src=src, dst=dst)
            nb.db_input(lambda now, r=req: nb.db.core.request("a", r, now=now))
        node_rec = encode_node(NodeRecord("a", 0, ""))
        nb.db_input(lambda now: nb.db.core.put_entry("ipam.node", "", "a~00000003", node_rec, now=now))
        nb.db_input(lambda now: nb.db.core.put_entry("ipam.identity", "", "a", b"a~00000004", now=now))
        await wait_for(
            lambda: (
                (a.counters["foreign_messages"], a.counters["misaddressed_messages"]) == (1, 1)
                and a.counters["foreign_records"] == 2
            )
        )
        assert a.core.stats().get("bad_messages", 0) == 0 and a.stats()["hosts"]["a"] == a.core.name
        # The same state directory resumes the new identity (not another one).
        c.kill("b")
        b3 = await c.start("b", "127.0.8.149", join="a")
        assert b3.core.name == b2.core.name
        nursery.cancel_scope.cancel()


async def test_a_restart_without_the_state_directory_adopts_the_predecessors_blocks(tmp_path: Path):
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp_path)
        a = await c.start("a", "127.0.8.152")
        b = await c.start("b", "127.0.8.153", join="a")
        await a.create_network(NET, subnets=["10.9.0.0/24"])
        await wait_for(lambda: b.netcfg(NET) is not None)
        await b.attach(NET)
        await wait_for(
            lambda: bool(own_blocks(b, NET)) and b.core.believed().keys() - a.core.believed().keys()
        )
        before = {r.block: r.free for r in a.listing(NET)}
        held = await b.allocate(NET, tag="b-ep1")
        ip = ipaddress.ip_address(held)
        (k,) = [
            r.block
            for r in b.listing(NET)
            if ipaddress.ip_address(r.first) <= ip <= ipaddress.ip_address(r.last)
        ]
        old, b_blocks = b.core.name, set(own_blocks(b, NET))
        # What the records showed before the crash is what the others know (ipam.md 3.9): wait for it.
        await wait_for(lambda: {r.block: r.free for r in a.listing(NET)}[k] == before[k] - 1)
        c.kill("b")  # a crash: no leave
        with trio.fail_after(10):
            await c.nodes["b"].wait_stopped()
        shutil.rmtree(tmp_path / "b.state")
        b2 = await c.start("b", "127.0.8.153", join="a")
        assert b2.core.name != old and b2.core.identity.host == "b"
        # b2 finds its predecessor in the records, retires it (adoption); its blocks are taken back (the
        # network's by a, which uses the network) and a treats the old identity as gone, b2 as b.
        await wait_for(lambda: a.core._node_state(old) == "retired", timeout=30)
        await wait_for(lambda: not any(r.owner == old for r in a.listing(NET)), timeout=30)
        assert b2.counters["predecessors_found"] >= 1
        assert a.stats()["hosts"]["b"] == b2.core.name
        rows = {r.block: r for r in a.listing(NET)}
        assert all(rows[k].owner == a.core.name for k in b_blocks)
        # The address b held stays reserved (quarantined, an endpoint of the dead identity); never twice.
        seen = {held}
        for i in range(40):
            try:
                addr = await a.allocate(NET, tag=f"a-ep{i}")
            except Exhausted:
                break
            assert addr not in seen
            seen.add(addr)
        await b2.attach(NET)
        nursery.cancel_scope.cancel()


async def test_the_founder_leaving_hands_every_vni_and_pool_block_to_its_heir(tmp_path: Path):
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, tmp_path)
        a = await c.start("a", "127.0.8.150")
        b = await c.start("b", "127.0.8.151", join="a")
        await wait_for(lambda: b.core.global_config() is not None and b.core.believed())
        total = len(a.core.believed()) + len(b.core.believed())
        assert total == 4095 + 256  # VNI blocks and pool blocks
        await c.nodes["a"].leave()  # thousands of grants to one heir: batched requests, none lost
        c.nodes["a"].stop()
        await wait_for(lambda: len(b.core.believed()) == total, timeout=30)
        assert c.svcs["a"].counters["requests_sent"] < c.svcs["a"].counters["messages_sent"] / 10
        nursery.cancel_scope.cancel()


def test_agent_settings_build_ipam_first_with_profile_leave_wait_and_ipam_table(tmp_path: Path):
    from meshnet import agent_cli

    def build(*flags: str, toml: str = ""):
        cfg = tmp_path / "agent.toml"
        cfg.write_text(toml)
        argv = ["run", "--name", "h", "--bind", "127.0.8.140:0", "--dataplane", "none", "--config", str(cfg)]
        argv += ["--state-dir", str(tmp_path / "s"), *flags]
        return agent_cli.build_settings(agent_cli._build_parser().parse_args(argv))[0]

    s = build("--profile", "local")
    ipam = s.services[0]
    assert ipam.name == "ipam" and isinstance(ipam, IpamService) and ipam.config.leave_wait == 3.0
    assert build("--profile", "lan").services[0].config.leave_wait == 30.0
    s = build("--profile", "local", toml="[ipam]\nrequest_try_timeout = 0.5\nleave_wait = 7\n")
    assert (s.services[0].config.request_try_timeout, s.services[0].config.leave_wait) == (0.5, 7.0)
    with pytest.raises(ConfigError, match=r"\[ipam\]"):
        build(toml="[ipam]\nno_such_field = 1\n")
    with pytest.raises(ConfigError, match="allow_unsafe"):
        build(toml="[ipam]\nunsafe_skip_epoch_check = true\n")
