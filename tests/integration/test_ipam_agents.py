"""Manager-free IPAM across real ``meshnet-agent`` processes on loopback (``--dataplane none``).

- five agents allocate 1,000 addresses concurrently from one /22: no address twice, every block
  believed by at most one agent (each agent's ``ipam ls``), and the believers' free counts add up;
- a SIGSTOPped owner blocks nobody who owns free space, and an allocation that needs its space fails
  with ``unreachable`` (naming it and the reclaim command) within the allocation budget, not a hang;
  after SIGCONT the same allocation succeeds;
- an agent SIGKILLed and restarted with its state directory believes its blocks again at once;
  ``meshnetctl ipam reclaim`` of a SIGKILLed agent gives its blocks to the reclaimer, for everyone.

Processes are started here, stopped by PID at teardown (SIGCONT first for a stopped one) and die with
pytest (PR_SET_PDEATHSIG); the work directory is removed at teardown. Deadlines: the local profile
detects a failure in a few seconds (30 s bound, as test_networkdb_agents.py); an IPAM allocation ends
within ``allocation_budget`` (10 s), a reclaim within ``reclaim_budget`` (30 s).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshnet import ctl
from tests.integration import agent_pool
from tests.integration.agent_pool import Pool, wait_until

DETECT_TIMEOUT = 30.0
SPREAD_TIMEOUT = 20.0
#: IpamConfig.allocation_budget: an allocation never takes longer (plus scheduling slack).
ALLOCATION_BUDGET = 10.0

pytestmark = pytest.mark.hang_guard(300)


class Agent(agent_pool.Agent):
    def allocate(self, network: str, tag: str, preferred: str | None = None) -> dict:
        body = {"network": network, "tag": tag}
        if preferred is not None:
            body["preferred"] = preferred
        return self.call("POST", "/v1/ipam/allocate", body)

    def blocks(self, network: str) -> list[dict]:
        return self.call("GET", f"/v1/ipam?network={network}")["blocks"]

    def alive(self) -> set[str]:
        return {n for n, state in self.states().items() if state == "alive"}

    @property
    def call_identity(self) -> str:
        """The agent's current IPAM identity name."""
        return self.call("GET", "/v1/ipam")["identity"]


pool = agent_pool.pool_fixture("meshnet-ipam-it-", Agent)


def start_cluster(pool: Pool, base: str, n: int, network: str, subnet: str) -> list[Agent]:
    """``n`` agents on BASE.1..n; the first creates ``network`` with ``subnet``, the others attach."""
    first = pool.start("i1", f"{base}.1")
    agents = [first] + [pool.start(f"i{i}", f"{base}.{i}", join=first) for i in range(2, n + 1)]
    names = {a.name for a in agents}
    wait_until(lambda: all(a.alive() == names for a in agents), SPREAD_TIMEOUT, "all alive", pool.describe)
    created = first.call("POST", "/v1/ipam/networks", {"id": network, "subnets": [subnet]})
    assert created["subnets"][0]["subnet"] == subnet and created["creator"].startswith("i1~")
    for a in agents[1:]:
        wait_until(
            lambda a=a: a.get(f"/v1/ipam/networks/{network}") is not None,
            SPREAD_TIMEOUT,
            f"{a.name} to learn {network}",
            pool.describe,
        )
        out = a.call("POST", "/v1/ipam/attach", {"network": network})
        assert out["netcfg"]["vni"] == created["vni"]
    return agents


def believed(agent: Agent, network: str) -> dict[int, int]:
    """Blocks ``agent`` believes (its own rows, owner_state ``self``) -> free."""
    return {b["block"]: b["free"] for b in agent.blocks(network) if b["owner_state"] == "self"}


def test_five_agents_allocate_a_thousand_addresses_concurrently_without_duplicates(pool: Pool):
    net, subnet = "c0ffee000000000000000022", "10.22.0.0/22"
    agents = start_cluster(pool, "127.0.14", 5, net, subnet)
    per_agent, workers = 200, 4

    def run(agent: Agent, i: int) -> tuple[str, str, str]:
        tag = f"{agent.name}-ep{i}"
        for _ in range(3):  # an `unknown` while a grant is in flight is retryable
            try:
                out = agent.allocate(net, tag)
                return agent.name, tag, out["address"]
            except ctl.AgentError as exc:
                if exc.code != "unknown":
                    raise
                time.sleep(0.5)
        raise AssertionError(f"{tag}: still unknown")

    with ThreadPoolExecutor(max_workers=len(agents) * workers) as ex:
        futures = [ex.submit(run, a, i) for i in range(per_agent) for a in agents]
        results = [f.result(timeout=120) for f in futures]
    addresses = [addr for _, _, addr in results]
    assert len(results) == 1000
    dupes = {a for a in addresses if addresses.count(a) > 1}
    assert not dupes, f"duplicates: {sorted(dupes)[:10]}"
    net_ = ipaddress.ip_network(subnet)
    assert all(ipaddress.ip_address(a) in net_ for a in addresses)
    reserved = {str(net_.network_address), str(net_.broadcast_address), str(net_.network_address + 1)}
    assert not reserved & set(addresses)
    # Idempotent per tag: asking again for a tag returns its address.
    name, tag, addr = results[7]
    again = next(a for a in agents if a.name == name).allocate(net, tag)
    assert again["address"] == addr

    # Every agent's own view: each block believed by at most one agent; believers' free counts add up
    # to what is left (1,021 pickable addresses in a /22 minus 1,000).
    def settled() -> bool:
        views = {a.name: believed(a, net) for a in agents}
        owners: dict[int, list[str]] = {}
        for name, blocks in views.items():
            for k in blocks:
                owners.setdefault(k, []).append(name)
        assert all(len(v) == 1 for v in owners.values()), f"blocks believed twice: {owners}"
        return len(owners) == 64 and sum(sum(b.values()) for b in views.values()) == 1021 - 1000

    wait_until(settled, SPREAD_TIMEOUT, "64 blocks with one believer each and 21 free", pool.describe)
    # Every agent lists all 64 blocks, and once the records spread all agree on every block's owner
    # and epoch: the believer's own word.
    truth = {k: a.name for a in agents for k in believed(a, net)}

    def views_agree() -> bool:
        for a in agents:
            rows = a.blocks(net)
            assert len(rows) == 64
            if {r["block"]: r["owner"] for r in rows} != truth:
                return False
        return True

    wait_until(views_agree, SPREAD_TIMEOUT, "every agent's view to name the believers", pool.describe)
    # The CLI shows the same, as a table and as JSON.
    out = agents[2].ctl("ipam", "ls", net)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[:4] == ["NETWORK", "SPACE", "BLOCKS", "RANGE"]
    rows = json.loads(agents[2].ctl("ipam", "ls", net, "--json").stdout)["blocks"]
    assert len(rows) == 64


def test_a_frozen_owner_blocks_nobody_with_free_space_and_its_space_is_unreachable(pool: Pool):
    net, subnet = "c0ffee000000000000000024", "10.24.0.0/24"
    a, b, c = start_cluster(pool, "127.0.14", 3, net, subnet)
    wait_until(
        lambda: believed(b, net) and believed(c, net), SPREAD_TIMEOUT, "b and c own a block", pool.describe
    )
    a_block = max(believed(a, net))  # a free block a (the creator) still believes
    rows = {r["block"]: r for r in c.blocks(net)}
    target = str(ipaddress.ip_address(rows[a_block]["first"]) + 3)

    a.proc.send_signal(signal.SIGSTOP)
    a.stopped = True
    wait_until(
        lambda: b.states().get("i1") == c.states().get("i1") == "dead",
        DETECT_TIMEOUT,
        "a failed",
        pool.describe,
    )
    wait_until(
        lambda: all(
            r["owner_state"] == "failed" for x in (b, c) for r in x.blocks(net) if r["owner"] == "i1"
        ),
        DETECT_TIMEOUT,
        "b's and c's IPAM to see a failed",
        pool.describe,
    )
    # b and c own free space: they allocate without a.
    t0 = time.monotonic()
    got = b.allocate(net, "b-ep1")
    assert got["owner"] == "i2"
    assert c.allocate(net, "c-ep1")["owner"] == "i3"
    assert time.monotonic() - t0 < ALLOCATION_BUDGET
    # An address in a's block needs a: a typed error in bounded time, not a hang.
    t0 = time.monotonic()
    with pytest.raises(ctl.AgentError) as err:
        c.allocate(net, "c-static", preferred=target)
    elapsed = time.monotonic() - t0
    assert err.value.status == 503 and err.value.code == "unreachable", err.value
    assert "i1~" in err.value.message and "`meshnetctl ipam reclaim i1`" in err.value.message
    assert elapsed < ALLOCATION_BUDGET + 5.0, elapsed
    # Dynamic allocations on c: from its own block, then by proxy from b's (b owns free space), and
    # once both are full the only free space is a's: unreachable (not exhausted), in bounded time.
    owners, last = set(), None
    for i in range(40):
        t0 = time.monotonic()
        try:
            owners.add(c.allocate(net, f"c-fill-{i}")["owner"])
        except ctl.AgentError as exc:
            last = exc
            break
    assert last is not None and last.code == "unreachable" and "i1" in last.message, last
    assert time.monotonic() - t0 < ALLOCATION_BUDGET + 5.0
    assert owners == {"i2", "i3"}, owners
    # The CLI shows a's blocks as failed.
    table = c.ctl("ipam", "ls", net).stdout
    assert any(line.split()[4:6] == ["i1", "failed"] for line in table.splitlines()[1:]), table

    a.proc.send_signal(signal.SIGCONT)
    a.stopped = False
    wait_until(lambda: c.alive() == {"i1", "i2", "i3"}, DETECT_TIMEOUT, "a alive again", pool.describe)
    got = c.allocate(net, "c-static", preferred=target)
    assert got["address"] == target and got["owner"] == "i1"


def test_restart_with_state_resumes_at_once_and_reclaim_frees_a_killed_agents_space(pool: Pool):
    net, subnet = "c0ffee000000000000000026", "10.26.0.0/24"
    a, b, c = start_cluster(pool, "127.0.14", 3, net, subnet)
    wait_until(
        lambda: believed(b, net) and believed(c, net), SPREAD_TIMEOUT, "b and c own a block", pool.describe
    )
    c_addr = c.allocate(net, "c-ep1")["address"]
    c_blocks = believed(c, net)

    # SIGKILL c and restart it with its state directory: its blocks are believed at once, before any
    # peer answered, and its allocation is still its own.
    pool.kill(c)
    c2 = pool.start("i3", c.ip, port=c.port, join=a)
    assert believed(c2, net) == c_blocks
    assert c2.allocate(net, "c-ep1")["address"] == c_addr
    assert c2.allocate(net, "c-ep2")["owner"] == "i3"

    # SIGKILL b: its blocks stay locked (failed owner) until an operator reclaims them.
    b_blocks = believed(b, net)
    assert b_blocks
    pool.kill(b)
    wait_until(
        lambda: a.states().get("i2") == c2.states().get("i2") == "dead",
        DETECT_TIMEOUT,
        "b failed",
        pool.describe,
    )

    # (IPAM hears the verdict right after gossip shows it: wait for its listing, not for the members.)
    def locked() -> bool:
        rows = {r["block"]: r for r in c2.blocks(net)}
        return all(rows[k]["owner"] == "i2" and rows[k]["owner_state"] == "failed" for k in b_blocks)

    wait_until(locked, DETECT_TIMEOUT, "c's IPAM to see b's blocks owned by a failed node", pool.describe)
    rows = {r["block"]: r for r in c2.blocks(net)}
    target = str(ipaddress.ip_address(rows[min(b_blocks)]["first"]) + 2)
    with pytest.raises(ctl.AgentError) as err:
        c2.allocate(net, "c-in-b", preferred=target)
    assert err.value.code == "unreachable"

    out = a.ctl("ipam", "reclaim", "i2")
    assert out.returncode == 0, out.stdout + out.stderr + pool.describe()
    won = re.match(r"reclaimed (\d+) blocks of i2", out.stdout)
    # b's block of this network, plus the VNI block every joiner takes (ipam.md 3.12).
    assert won and int(won.group(1)) >= len(b_blocks), out.stdout
    assert set(b_blocks) <= set(believed(a, net))

    def others_see_a() -> bool:
        rows = {r["block"]: r for r in c2.blocks(net)}
        return all(rows[k]["owner"] == "i1" for k in b_blocks)

    wait_until(others_see_a, SPREAD_TIMEOUT, "c to see a own b's blocks", pool.describe)
    got = c2.allocate(net, "c-in-b", preferred=target)
    assert got["address"] == target and got["owner"] == "i1"
    # A reclaim of a live node is refused (exit 1).
    refused = a.ctl("ipam", "reclaim", "i3")
    assert refused.returncode == 1 and "reclaim_refused" in refused.stderr, refused.stderr

    # Agents stopped together (SIGTERM: graceful leave, IPAM first) all exit within seconds: with the
    # local profile the IPAM leave waits at most 3 s for heirs that may be leaving too, then the gossip
    # leave at most leave_timeout (5 s).
    old = a.call_identity
    t0 = time.monotonic()
    for agent in (a, c2):
        agent.proc.send_signal(signal.SIGTERM)
    for agent in (a, c2):
        assert agent.proc.wait(timeout=30) == 0, pool.describe()
    assert time.monotonic() - t0 < 20.0, pool.describe()
    # A restart after that graceful leave (same name, same state directory) starts and serves the API:
    # the retired IPAM identity's state is kept aside and a new identity of host i1 starts.
    a2 = pool.start("i1", a.ip, port=a.port)
    assert (a.state / "ipam.retired-1").is_dir()
    ident = a2.call("GET", "/v1/agent")["services"]["ipam"]["identity"]
    assert ident.startswith("i1~") and ident != old
    assert a2.call("GET", "/v1/ipam")["node"] == "i1"


def test_the_same_name_after_a_leave_or_without_state_is_a_new_identity_and_no_space_is_stuck(pool: Pool):
    net, subnet = "c0ffee000000000000000028", "10.28.0.0/26"  # 4 blocks of 16, 61 pickable addresses
    a, b, c = start_cluster(pool, "127.0.14", 3, net, subnet)
    wait_until(
        lambda: believed(b, net) and believed(c, net), SPREAD_TIMEOUT, "b and c own a block", pool.describe
    )
    live: dict[str, str] = {}  # address -> tag, every allocation that is still held

    def take(agent: Agent, tag: str) -> dict:
        out = agent.allocate(net, tag)
        assert out["address"] not in live, f"{out['address']} held twice: {live[out['address']]}, {tag}"
        live[out["address"]] = tag
        return out

    take(c, "c-ep1")
    # (1) SIGTERM: the graceful leave hands c's blocks over and retires its identity. The same --name
    # with the same state directory comes back as a new identity of host i3 and allocates (this was
    # 409 `conflict` forever when the identity was named after the host).
    c_old = c.call_identity
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(timeout=30) == 0, pool.describe()
    del live[next(x for x, t in live.items() if t == "c-ep1")]  # the leave released c's endpoint
    c2 = pool.start("i3", c.ip, port=c.port, join=a)
    assert c2.call_identity.startswith("i3~") and c2.call_identity != c_old
    c2.call("POST", "/v1/ipam/attach", {"network": net})
    wait_until(
        lambda: any(r["owner"] == "i1" and r["owner_state"] == "alive" for r in c2.blocks(net)),
        SPREAD_TIMEOUT,
        "c2 to see i1 alive",
        pool.describe,
    )
    got = take(c2, "c2-ep1")
    assert got["owner"] in ("i1", "i2", "i3") and got["owner_identity"] != c_old

    # (2) SIGKILL b and restart it with the same --name and an EMPTY state directory: a new identity
    # that finds its predecessor and adopts it (retires it; its blocks are taken back), so its space
    # is not stuck: filling the network from a ends in `exhausted`, never `unreachable`.
    before = {r["block"]: r["free"] for r in a.blocks(net)}
    y = ipaddress.ip_address(take(b, "b-ep1")["address"])
    k = next(
        r["block"]
        for r in b.blocks(net)
        if ipaddress.ip_address(r["first"]) <= y <= ipaddress.ip_address(r["last"])
    )
    b_old, b_blocks = b.call_identity, set(believed(b, net))
    # Only what the records showed before the crash is known to the others (an allocation in the last
    # free-hint interval before a crash is not: ipam.md 3.9, the adoption has no endpoint records here).
    wait_until(
        lambda: all({r["block"]: r["free"] for r in x.blocks(net)}[k] == before[k] - 1 for x in (a, c2)),
        SPREAD_TIMEOUT,
        "a and c2 to see b's allocation in b's block record",
        pool.describe,
    )
    pool.kill(b)
    shutil.rmtree(b.state)
    b2 = pool.start("i2", b.ip, port=b.port, join=a)
    assert b2.call_identity.startswith("i2~") and b2.call_identity != b_old

    def adopted() -> bool:
        return all(r["owner_identity"] != b_old for x in (a, c2) for r in x.blocks(net)) and all(
            x.call("GET", "/v1/agent")["services"]["ipam"]["hosts"].get("i2") == b2.call_identity
            for x in (a, c2)
        )

    wait_until(
        adopted, DETECT_TIMEOUT, "b's old identity to be adopted and its blocks taken back", pool.describe
    )
    rows = {r["block"]: r for r in a.blocks(net)}
    assert all(rows[k]["owner"] in ("i1", "i3") for k in b_blocks), rows
    last = None
    for i in range(70):
        try:
            take(a, f"a-fill-{i}")
        except ctl.AgentError as exc:
            last = exc
            break
    assert last is not None and last.code == "exhausted", last
    # Every pickable address of the /26 is held exactly once: b's endpoint address by the quarantine
    # of the adopted identity (its container may still answer ARP), c's (released by its leave) again.
    pickable = {str(x) for x in ipaddress.ip_network(subnet).hosts()} - {"10.28.0.1"}
    assert len(live) == 61, (sorted(pickable - live.keys()), [r for r in a.blocks(net)], pool.describe())
    table = a.ctl("ipam", "ls", net).stdout
    assert table.splitlines()[0].split()[-1] == "IDENTITY" and "i1~" in table, table


def test_bench_ipam_smoke(tmp_path: Path):
    """bench/ipam.py still runs end to end (2 agents + a joiner, a few allocations): benches must not rot."""
    out = tmp_path / "ipam.json"
    bench = Path(__file__).resolve().parents[2] / "bench" / "ipam.py"
    argv = [sys.executable, str(bench), "--nodes", "2", "--count", "20", "--duration", "1", "--clients", "1"]
    argv += ["--subnet", "10.27.0.0/20", "--base-ip", "127.0.14", "--json", str(out)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=200, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    fig = json.loads(out.read_text())
    assert fig["local_in_agent_ms"]["n"] == 20 and fig["remote_in_agent_ms"]["n"] == 20, fig
    assert not any(fig["failures"].values()) and not fig["notes"], fig
    assert fig["throughput_per_host"]["mean"] > 0 and fig["first_alloc_s"] > 0
