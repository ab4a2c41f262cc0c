"""The three checks ipam.md 3.6 rests on, one exact scenario each, with and without the check: the epoch
check on grants, the write-ahead order, and the reclaim acknowledgements; plus a grant's epoch staying
put when a reclaimer's acknowledgement raises the donor's high-water mark."""

from __future__ import annotations

import random

import pytest

from meshnet.ipam import Ipam, SpaceId, fast
from meshnet.ipam import messages as msg
from meshnet.ipam.records import decode_block

from .ipam_harness import Cluster
from .safety import Safety

CFG = fast().with_(
    vni_last=4096 + 16 * 16 - 1, vni_block_size=16, default_pool="10.0.0.0/20", default_pool_prefix=28
)
SUBNET = "10.200.0.0/24"  # 16 blocks of 16


def _believed(c: Cluster, host: str, sid: SpaceId) -> set[int]:
    return {k for s, k in c.ipam(host).believed() if s == sid}


@pytest.mark.parametrize("check", [True, False], ids=["with-check", "mutated"])
def test_a_replayed_old_grant_never_revives_a_block_given_away(check):
    """h1 inherits h0's blocks (h0 leaves), then gives one to h2; the old grant h0 -> h1 of that block,
    replayed, is refused by the epoch check. Without the check h1 believes it again beside h2 (S1)."""
    cfg = CFG if check else CFG.with_(allow_unsafe=True, unsafe_skip_epoch_check=True)
    c = Cluster(3, config=cfg, seed=11)
    safety = Safety(c)
    c.call("h0", "create_network", "n0", subnets=[SUBNET])
    c.run_for(0.5)
    c.call("h1", "attach", "n0")
    c.run_for(0.5)
    c.leave("h0")
    c.call("h2", "attach", "n0")
    c.run_for(1.0)
    sid = c.ipam("h1").netcfg("n0").space_ids()[0]
    given = _believed(c, "h2", sid)
    assert given and not given & _believed(c, "h1", sid)
    safety.check()
    old = [
        i
        for i, (_, dst, _, payload) in enumerate(c.history)
        if dst == "h1"
        and isinstance(b := msg.decode(payload).body, msg.SpaceGrant)
        and (b.scope, b.space) == (sid.scope, sid.name)
        and b.k in given
    ]
    assert old, "no grant to h1 of the block it gave away"
    c.replay(old[0])
    if check:
        c.run_for(1.0)
        safety.check()
        assert not given & _believed(c, "h1", sid)
        assert c.ipam("h1").stats()["stale_grants"] >= 1
    else:
        with pytest.raises(AssertionError, match="^S1"):
            c.run_for(1.0)
            safety.check()


def _core(name: str, cfg, founder: bool) -> Ipam:
    core = Ipam.fresh(
        cfg, host=name, name=name, rng=random.Random(1), now=0.0, cluster_id="c", founder=founder
    )
    for p in core.persists_to_write():
        core.persisted(p.seq, now=0.0)
    return core


@pytest.mark.parametrize("check", [True, False], ids=["with-check", "mutated"])
def test_a_grant_leaves_only_after_the_donor_persisted_it(check):
    """The donor's grant message is released only once the persist that ends its belief is done; without
    the write-ahead order it leaves at once (a crash then would leave two believers)."""
    cfg = CFG if check else CFG.with_(allow_unsafe=True, unsafe_skip_write_ahead=True)
    o = _core("o", cfg, founder=True)
    o.node_alive("n", now=0.0)
    o.create_network("net", subnets=[SUBNET], now=0.0)
    for p in o.persists_to_write():
        o.persisted(p.seq, now=0.0)
    o.messages_to_send()
    sid = o.netcfg("net").space_ids()[0]
    request = msg.Envelope("n", "c", msg.SpaceRequest(5, sid.scope, sid.name, "", -1))
    o.receive_message("n", msg.encode(request), now=1.0)
    pending = o.persists_to_write()
    assert pending, "a grant must change durable state"
    early = [msg.decode(m.payload).body for m in o.messages_to_send()]
    if check:
        assert early == []
        for p in pending:
            o.persisted(p.seq, now=1.0)
        late = [msg.decode(m.payload).body for m in o.messages_to_send()]
        assert [type(b) for b in late] == [msg.SpaceGrant]
    else:
        assert [type(b) for b in early] == [msg.SpaceGrant]


@pytest.mark.parametrize("check", [True, False], ids=["with-acks", "mutated"])
def test_two_reclaimers_of_one_dead_node_leave_one_believer(check):
    """Both reclaim the same dead node at the same instant: acknowledgements leave one winner per
    block. Without them both believe (S1)."""
    cfg = CFG if check else CFG.with_(allow_unsafe=True, unsafe_reclaim_without_acks=True)
    c = Cluster(4, config=cfg, seed=3190)
    safety = Safety(c)
    c.call("h0", "create_network", "n0", subnets=[SUBNET])
    c.run_for(0.5)
    c.call("h3", "attach", "n0")
    c.run_for(1.0)
    c.crash("h3")
    c.destroy("h3")
    c.call("h1", "reclaim", ["h3"])
    if check:
        c.call("h2", "reclaim", ["h3"])
        c.run_for(CFG.reclaim_budget + 1)
        safety.check()
    else:
        with pytest.raises(AssertionError, match="^S1"):
            c.call("h2", "reclaim", ["h3"])
            c.run_for(CFG.reclaim_budget + 1)
            safety.check()


def test_a_reclaim_ack_does_not_redate_a_pending_grant():
    """h0 grants a block to h1, which dies before confirming; h2 reclaims h1 and h0 acknowledges, which
    raises h0's high-water mark above the grant's epoch. Cut off before it sees h2's held record, h0
    restarts and re-publishes its pending grant: at the grant's own epoch, below the reclaimer's, so
    once healed everyone agrees that h2 owns the block. (Re-dated to the high-water mark, the grant
    tied the reclaimer's epoch and h0 ended up taking the block back from h2.)"""
    c = Cluster(3, config=CFG, seed=5)
    safety = Safety(c)
    c.call("h0", "create_network", "n0", subnets=[SUBNET])
    c.call("h2", "attach", "n0")
    c.run_for(1.0)
    c.crash_after("h1", 1, on="message")
    c.call("h1", "attach", "n0")
    c.run_for(0.5)
    assert not c.is_up("h1")
    sid = c.ipam("h0").netcfg("n0").space_ids()[0]
    (key, target), *_ = c.ipam("h0").pending_grants().items()
    assert target == "h1"
    k = key[1]
    granted_at = c.ipam("h0").block_state(sid.scope, sid.name, k).granted_at
    c.destroy("h1")
    c.call("h2", "reclaim", ["h1"])
    for _ in range(200):  # until h0 acknowledged (its hw passed the grant's epoch)
        c.run_for(0.0005)
        if c.ipam("h0").block_state(sid.scope, sid.name, k).hw > granted_at:
            break
    assert c.ipam("h0").pending_grants() == {key: "h1"}
    c.partition(["h0"])
    c.run_for(1.0)
    c.crash("h0")
    c.restart("h0", state=True)
    c.run_for(1.0)
    rec = c.slots["h0"].replica[("ipam.block", sid.scope, f"{sid.name}#{k}@h0")]
    assert decode_block(rec.value).epoch == granted_at
    c.heal()
    for _ in range(30):
        c.run_for(1.0)
        safety.check()
    assert c.ipam("h2").believes(sid.scope, sid.name, k)
    for h in c.up:
        e = c.ipam(h).view_entry(sid.scope, sid.name, k)
        assert (e.owner, e.epoch) == ("h2", granted_at + 1), f"{h} sees {e}"
