"""Named regressions from Weave Net's history (ipam.md sections 2 and 4), as deterministic scenarios over
the IPAM harness (``tests/unit/ipam/ipam_harness.py``: IPAM cores over a simulated NetworkDB, network,
membership and fsync, in virtual time).

Each scenario checks the safety invariants of ``tests/unit/ipam/safety.py`` (S1 one believer per block,
S2 no address held twice, S3-S7) after every simulated second, and the liveness it names: the space of
dead identities comes back, concurrent reclaimers leave one winner per block, a stale view never wins a
block someone believes, a partition that restarts together recovers, two founders never merge.
"""

from __future__ import annotations

import pytest

from meshnet.ipam import (
    Allocated,
    LeaveCompleted,
    NetworkCreated,
    OperationFailed,
    Reclaimed,
    SpaceId,
    Unknown,
    Unreachable,
    fast,
)
from tests.unit.ipam.ipam_harness import Cluster
from tests.unit.ipam.safety import Safety

CFG = fast().with_(
    vni_last=4096 + 16 * 16 - 1, vni_block_size=16, default_pool="10.0.0.0/20", default_pool_prefix=28
)
SUBNET = "10.10.0.0/22"  # 64 blocks of 16
NET = "n0"


def run_checked(c: Cluster, safety: Safety, seconds: float, step: float = 1.0) -> None:
    """Run ``seconds`` of virtual time, checking the safety invariants every ``step``."""
    end = c.now + seconds
    while c.now < end:
        c.run_for(min(step, end - c.now))
        safety.check()


def allocate(c: Cluster, host: str, tag: str, network: str = NET) -> object:
    """Allocate one address for ``tag`` on ``host`` and wait for the operation's result."""
    op = c.call(host, "allocate", network, tag=tag)
    return c.wait(host, op, timeout=CFG.allocation_budget + 1)


def network_of_all(n: int, seed: int, **kw) -> tuple[Cluster, Safety, dict[str, list[str]]]:
    """``n`` hosts; h0 creates NET, the others attach; every host allocates three addresses."""
    c = Cluster(n, config=CFG, seed=seed, **kw)
    safety = Safety(c)
    c.call("h0", "create_network", NET, subnets=[SUBNET])
    run_checked(c, safety, 1.0)
    for h in c.hosts[1:]:
        c.call(h, "attach", NET)
    run_checked(c, safety, 3.0)
    held: dict[str, list[str]] = {}
    for h in c.hosts:
        for i in range(3):
            res = allocate(c, h, f"{h}-ep{i}")
            assert isinstance(res, Allocated), f"{h}: {res}"
            held.setdefault(h, []).append(res.value)
    safety.check()
    return c, safety, held


def alive_names(c: Cluster) -> set[str]:
    return {c.name(h) for h in c.up}


def owners_in_views(c: Cluster, sid: SpaceId) -> dict[int, set[str]]:
    """Per block of ``sid``, the owners the running attached cores' views name."""
    out: dict[int, set[str]] = {}
    for h in c.up:
        core = c.ipam(h)
        sp = core.space(sid.scope, sid.name)
        if sp is None or (sid.scope and sid.scope not in core.attached_networks()):
            continue
        for k in range(sp.nblocks):
            out.setdefault(k, set()).add(core.view_entry(sid.scope, sid.name, k).owner)
    return out


def durable_believers(c: Cluster, sid: SpaceId) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for h in c.hosts:
        s = c.summary(h)
        if s is None:
            continue
        for s_id, k in s.believed():
            if s_id == sid:
                out.setdefault(k, []).append(s.identity.name)
    return out


def net_sid(c: Cluster) -> SpaceId:
    return c.ipam(c.up[0]).netcfg(NET).space_ids()[0]


def every_host_allocates(c: Cluster, safety: Safety, prefix: str) -> None:
    for h in c.up:
        res = allocate(c, h, f"{prefix}-{h}")
        assert isinstance(res, Allocated), f"{c.name(h)} cannot allocate: {res}"
    safety.check()


# ---------------------------------------------------------------------- weaveworks/weave #894


def test_rolling_restart_with_new_identities_leaves_no_space_with_ghosts():
    """#894: every host restarts, one after the other, without its state directory (a new identity each
    time). Weave left the whole ring owned by the old names; here each new identity adopts its
    predecessor (same host, host lock), so in the end every block is believed by a running identity."""
    c, safety, held = network_of_all(4, seed=894)
    sid = net_sid(c)
    old = alive_names(c)
    for h in c.hosts:
        c.crash(h)
        run_checked(c, safety, 2.0)
        c.restart(h, state=False)
        assert c.name(h) not in old
        c.call(h, "attach", NET)
        run_checked(c, safety, 3 * CFG.reclaim_budget)
    run_checked(c, safety, 60.0)
    alive = alive_names(c)
    assert not alive & old
    believers = durable_believers(c, sid)
    sp = c.ipam("h0").space(sid.scope, sid.name)
    assert sorted(believers) == list(range(sp.nblocks)), "some blocks have no believer"
    assert all(len(v) == 1 and v[0] in alive for v in believers.values()), believers
    for k, owners in owners_in_views(c, sid).items():
        assert owners <= alive, f"block {k} still shown owned by {owners - alive}"
    for vsid in (SpaceId("", "vni"), SpaceId("", "pool")):
        b = durable_believers(c, vsid)
        assert all(v[0] in alive for v in b.values()), f"{vsid}: {b}"
    every_host_allocates(c, safety, "after")


# ---------------------------------------------------------------------- #1949, #3190, #3722


def test_reclaim_run_on_two_hosts_at_once_has_one_winner_per_block():
    """#3190/#3722 (and #1949, rmpeer on every host): the operator reclaims a dead host on two hosts at
    the same instant. Each of its blocks ends with exactly one believer, and both reclaims end."""
    c, safety, held = network_of_all(4, seed=3190)
    sid = net_sid(c)
    c.call("h3", "allocate", NET, tag="service:vip")  # a VIP outlives its node
    run_checked(c, safety, 1.0)
    dead = c.name("h3")
    before = {k for k, v in durable_believers(c, sid).items() if v == [dead]}
    assert before
    everything = set(c.ipam("h3").believed())  # also VNI and pool blocks
    c.crash("h3")
    c.destroy("h3")
    run_checked(c, safety, 1.0)
    ops = {h: c.call(h, "reclaim", [dead]) for h in ("h0", "h1")}
    run_checked(c, safety, CFG.reclaim_budget + 5)
    results = {h: c.result(h, op) for h, op in ops.items()}
    assert all(isinstance(r, Reclaimed) for r in results.values()), results
    run_checked(c, safety, 30.0)
    after = durable_believers(c, sid)
    for k in before:
        assert len(after.get(k, [])) == 1 and after[k][0] != dead, f"block {k}: {after.get(k)}"
    assert sum(r.blocks for r in results.values()) <= len(everything)
    for s_id in {key[0] for key in everything}:
        now_held = durable_believers(c, s_id)
        for key in everything:
            if key[0] == s_id:
                assert len(now_held.get(key[1], [])) == 1, f"{key}: {now_held.get(key[1])}"
    # the dead host's endpoint addresses are quarantined, not handed out again at once
    for h in ("h0", "h1", "h2"):
        for i in range(4):
            res = allocate(c, h, f"new-{h}-{i}")
            assert isinstance(res, Allocated), res
            assert res.value not in held["h3"], f"{res.value} of the dead host reused before quarantine"
    safety.check()


# ---------------------------------------------------------------------- #3628, #3444


def test_reclaim_on_a_stale_view_never_takes_a_block_someone_believes():
    """#3628/#3444: the donor hands a block over while the reclaimer is cut off, then dies; the
    reclaimer, back with a view that still shows the donor as owner, reclaims it at once. The new owner
    refuses (it believes the block), so the reclaimer wins only the blocks the donor still held."""
    c, safety, _ = network_of_all(4, seed=3628)
    sid = net_sid(c)
    c.partition(["h2"])  # h2 alone
    run_checked(c, safety, 1.0)
    before = set(c.ipam("h3").believed())
    for i in range(40):  # h3 fills its blocks and asks h0 for another
        res = allocate(c, "h3", f"h3-more{i}")
        assert isinstance(res, Allocated), res
        moved = {key for key in set(c.ipam("h3").believed()) - before if key[0] == sid}
        if moved:
            break
    run_checked(c, safety, 2.0)
    assert moved, "h3 got no new block from h0"
    stale = {key: c.ipam("h2").view_entry(key[0].scope, key[0].name, key[1]).owner for key in moved}
    assert set(stale.values()) == {"h0"}, f"h2's view is not stale: {stale}"
    c.crash("h0")
    c.destroy("h0")
    c.heal()
    op = c.call("h2", "reclaim", ["h0"])  # before any anti-entropy sync
    run_checked(c, safety, CFG.reclaim_budget + 5)
    res = c.result("h2", op)
    assert isinstance(res, Reclaimed) and res.blocks > 0, res
    for key in moved:
        assert c.ipam("h3").believes(key[0].scope, key[0].name, key[1]), f"h3 lost {key}"
        assert not c.ipam("h2").believes(key[0].scope, key[0].name, key[1]), f"h2 took {key}"
    run_checked(c, safety, 30.0)
    every_host_allocates(c, safety, "after")


# ---------------------------------------------------------------------- Weave docs: a partition restarting together


@pytest.mark.parametrize("state", [False, True], ids=["without-state", "with-state"])
def test_whole_partition_restarting_together(state):
    """Weave's docs: persistence fails if all peers of a partition restart together. Here: two hosts cut
    off from the rest crash and restart at once. With their state directories they resume their blocks
    and allocate inside the partition; without them they are new identities that cannot allocate until
    they can reach an owner (``unreachable`` within the budget, never a hang or a guess), and once healed
    each adopts its predecessor (a dead predecessor with a dead peer does not block the other)."""
    c, safety, held = network_of_all(5, seed=1000 + state)
    sid = net_sid(c)
    side = ["h3", "h4"]
    c.partition(side)
    run_checked(c, safety, 1.0)
    old = {h: c.name(h) for h in side}
    for h in side:
        c.crash(h)
    run_checked(c, safety, 1.0)
    for h in side:
        c.restart(h, state=state)
    run_checked(c, safety, 2.0)
    for h in side:
        c.call(h, "attach", NET)
    run_checked(c, safety, 2.0)
    for h in side:
        res = allocate(c, h, f"cut-{h}")
        if state:
            assert isinstance(res, Allocated), f"{c.name(h)} with its state dir cannot allocate: {res}"
        else:
            # a new identity that never saw the network: "unknown" (not synced), never a hang or a guess
            assert isinstance(res, OperationFailed) and isinstance(res.error, (Unknown, Unreachable)), res
    safety.check()
    c.heal()
    run_checked(c, safety, 3 * CFG.reclaim_budget + 30)
    alive = alive_names(c)
    if not state:
        assert not set(old.values()) & alive
    believers = durable_believers(c, sid)
    assert all(len(v) == 1 and v[0] in alive for v in believers.values()), believers
    assert len(believers) == c.ipam("h0").space(sid.scope, sid.name).nblocks
    for k, owners in owners_in_views(c, sid).items():
        assert owners <= alive, f"block {k} still shown owned by {owners - alive}"
    every_host_allocates(c, safety, "healed")


# ---------------------------------------------------------------------- seeded by different peers


@pytest.mark.parametrize("netdb_check", [True, False], ids=["netdb-refuses", "records-leak"])
def test_two_founders_meeting_never_merge(netdb_check):
    """Weave's "seeded by different peers" (#1463): two clusters founded apart meet. NetworkDB refuses
    the other cluster id; and even if records leaked across (the check removed), IPAM ignores the
    other cluster's configs, messages and ownership records: each cluster keeps its own VNI space, its
    networks and its believers, and both go on allocating."""
    clusters = {"h0": "cluster-a", "h1": "cluster-a", "h2": "cluster-b", "h3": "cluster-b"}
    c = Cluster(4, config=CFG, seed=1463, clusters=clusters, netdb_checks_cluster=netdb_check)
    c.partition(["h0", "h1"], ["h2", "h3"])  # founded apart
    a, b = Safety(c, hosts=["h0", "h1"]), Safety(c, hosts=["h2", "h3"])
    c.run_for(1.0)
    for founder, joiner, net in (("h0", "h1", "na"), ("h2", "h3", "nb")):
        op = c.call(founder, "create_network", net, subnets=[SUBNET])
        assert isinstance(c.wait(founder, op, timeout=2), NetworkCreated)
        c.call(joiner, "attach", net)
    c.run_for(3.0)
    for s in (a, b):
        s.check()
    before = {h: (c.ipam(h).global_config(), sorted(c.ipam(h).believed())) for h in c.hosts}
    c.heal()  # they meet
    for _ in range(60):
        c.run_for(1.0)
        a.check()
        b.check()
    for h in c.hosts:
        core = c.ipam(h)
        assert core.global_config() == before[h][0], f"{h} adopted the other cluster's config"
        assert sorted(core.believed()) == before[h][1], f"{h}'s beliefs changed"
        other = "nb" if clusters[h] == "cluster-a" else "na"
        assert core.netcfg(other) is None, f"{h} installed the other cluster's network"
    if not netdb_check:
        assert any(e.code == "foreign_cluster" for _, e in c.alarms()), "no alarm about the other cluster"
    for h, net in (("h0", "na"), ("h1", "na"), ("h2", "nb"), ("h3", "nb")):
        res = allocate(c, h, f"met-{h}", network=net)
        assert isinstance(res, Allocated), res
    a.check()
    b.check()


def test_graceful_leave_chain_keeps_every_block_owned():
    """#1593: a host leaves and hands its space to an heir that later leaves too. Every block ends
    believed by a running host."""
    c, safety, _ = network_of_all(4, seed=1593)
    sid = net_sid(c)
    for h in ("h0", "h1"):
        res = c.leave(h)
        assert isinstance(res, LeaveCompleted) and not res.unconfirmed, res
        run_checked(c, safety, 5.0)
    run_checked(c, safety, 30.0)
    alive = alive_names(c)
    believers = durable_believers(c, sid)
    assert len(believers) == c.ipam("h2").space(sid.scope, sid.name).nblocks
    assert all(len(v) == 1 and v[0] in alive for v in believers.values()), believers
    every_host_allocates(c, safety, "after")


def test_restart_after_a_free_hint_change_agrees_with_itself():
    """#2344: a free-count update that was not persisted made a restarted Weave peer conflict with its
    own older ring. Here a host allocates (its free hint changes) and crashes at once, several times,
    before and after the persist; restarted with its state directory it re-publishes exactly what it
    believes: no alarm, the views agree on owner and free count, and no address is handed out twice."""
    c, safety, held = network_of_all(3, seed=2344)
    sid = net_sid(c)
    got: list[str] = []
    for i, after in enumerate([0, 1, 2, 3]):  # crash after this many inputs (0: no crash)
        if after:
            c.crash_after("h1", after)
        op = c.call("h1", "allocate", NET, tag=f"hint-{i}")
        res = c.wait("h1", op, timeout=1.0)
        if isinstance(res, Allocated):
            got.append(res.value)
        if not c.is_up("h1"):
            c.restart("h1", state=True)
        run_checked(c, safety, 3.0)
    run_checked(c, safety, 20.0)
    assert not c.alarms(), c.alarms()
    assert len(set(got)) == len(got)
    core = c.ipam("h1")
    sp = core.space(sid.scope, sid.name)
    for s_id, k in core.believed():
        if s_id != sid:
            continue
        truth = sp.free_in(k, core.block_state(sid.scope, sid.name, k).allocs)
        for h in c.up:
            e = c.ipam(h).view_entry(sid.scope, sid.name, k)
            assert e.owner == "h1" and sp.free_in(k, [u[0] for u in e.used]) == truth, (h, k, e)
    every_host_allocates(c, safety, "after")


def test_hosts_leaving_together_do_not_wait_for_each_other():
    """All hosts of a network leave at the same moment (a fleet SIGTERMed at once): each leaver's heir
    is leaving too and will never confirm, so no leave waits out ``leave_wait``; the blocks stay with
    retired identities and the host that stays takes them back."""
    c, safety, _ = network_of_all(3, seed=4242)
    sid = net_sid(c)
    ops = {h: c.call(h, "leave") for h in ("h0", "h1")}
    run_checked(c, safety, 1.0, step=0.1)
    for h, op in ops.items():
        res = c.result(h, op)
        assert isinstance(res, LeaveCompleted), f"{h}: {res} after 1 s (leave_wait {CFG.leave_wait} s)"
    for h in ops:
        c.depart(h)
    run_checked(c, safety, 2 * CFG.reclaim_budget + 30)
    believers = durable_believers(c, sid)
    assert len(believers) == c.ipam("h2").space(sid.scope, sid.name).nblocks
    assert all(v == ["h2"] for v in believers.values()), believers
    every_host_allocates(c, safety, "after")
