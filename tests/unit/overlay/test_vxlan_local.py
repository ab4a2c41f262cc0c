"""``HostView.vxlan_local``: the data address as every ``vxlan0``'s source address (``local``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshnet.dataplane import (
    AddFdbEntry,
    AddNeighbour,
    AddVxlan,
    MemoryDataplane,
    SetLinkMaster,
    SetLinkUp,
)
from meshnet.overlay import HostView, desired

from .helpers import NET_B, VTEPS, ep, reconcile, replan, sandbox, view

OV_A = "mn-ov-4097"
LOCAL1 = ep(2, "h1")
REMOTE3 = ep(3, "h2")
REMOTE4 = ep(4, "h3")
LOCAL_B = ep(6, "h1", NET_B)


def local_view(local: str | None) -> HostView:
    v = view([LOCAL1, REMOTE3, REMOTE4, LOCAL_B], [sandbox("web", (LOCAL1, "eth0"), (LOCAL_B, "eth1"))])
    return replace(v, vxlan_local=local)


def test_desired_and_plan_carry_the_local_address():
    v = local_view(VTEPS["h1"])
    d = desired(v)
    assert {ov.local for ov in d.overlays.values()} == {"192.0.2.1"}
    dp = MemoryDataplane()
    _, ops = reconcile(dp, v)
    vx = [op for op in ops if isinstance(op, AddVxlan)]
    assert len(vx) == 2 and all(op.local == "192.0.2.1" for op in vx)
    assert "link vxlan0 vxlan id 4097 dstport 4789 local 192.0.2.1" in dp.dump()
    assert replan(dp, v) == ()
    # None keeps the old behaviour: no local, routing picks the source.
    assert all(ov.local is None for ov in desired(local_view(None)).overlays.values())


def test_adopting_a_device_with_the_same_local_changes_nothing():
    old = MemoryDataplane()
    v = local_view("192.0.2.1")
    reconcile(old, v)
    adopted = MemoryDataplane(old.snapshot())
    assert replan(adopted, v) == ()


@pytest.mark.parametrize(
    ("before", "after"), [(None, "192.0.2.1"), ("192.0.2.1", "192.0.2.9"), ("192.0.2.1", None)]
)
def test_a_different_local_recreates_vxlan0_with_its_entries(before, after):
    dp = MemoryDataplane()
    reconcile(dp, local_view(before))
    # The same fake plays the kernel a restarted agent finds (MemoryDataplane(snapshot) would forget
    # that br0's MAC is pinned, which the kernel keeps).
    adopted = dp
    v = local_view(after)
    ops = replan(adopted, v)
    assert ops[0] == AddVxlan(netns=OV_A, name="vxlan0", vni=4097, dstport=4789, local=after, mtu=1450)
    assert ops[1:3] == (
        SetLinkMaster(netns=OV_A, name="vxlan0", master="br0"),
        SetLinkUp(netns=OV_A, name="vxlan0"),
    )
    # Both overlays' vxlan0 are recreated; network A's two remote endpoints get their entries back.
    assert sum(isinstance(op, AddVxlan) for op in ops) == 2
    assert sum(isinstance(op, AddFdbEntry | AddNeighbour) for op in ops if op.netns == OV_A) == 4
    # Nothing else is touched: no bridge, veth or address op.
    kinds = {type(op).__name__ for op in ops}
    assert kinds == {"AddVxlan", "SetLinkMaster", "SetLinkUp", "AddFdbEntry", "AddNeighbour"}
    adopted.apply(ops)
    assert replan(adopted, v) == ()
    assert (f"local {after}" in adopted.dump()) == (after is not None)


@pytest.mark.parametrize("bad", ["fd00::1", "0.0.0.0", "239.1.1.1", "nope", "010.0.0.1"])
def test_a_bad_local_address_is_refused(bad):
    with pytest.raises(ValueError, match="vxlan_local"):
        HostView(host="h1", vxlan_local=bad)
