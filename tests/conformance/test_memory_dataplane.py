"""MemoryDataplane and the op values on their own: validation, atomicity, the canonical dump.

Pure tests (no root): what only the fake has (``last_plan``, ``dump()``, seeding from a snapshot) and
the construction rules of ``meshnet.dataplane.ops``. The behaviour both implementations share is in
dataplane_contract.py.
"""

from __future__ import annotations

import errno

import pytest

from meshnet.core.errors import DataplaneError, MeshnetError
from meshnet.dataplane import (
    AddAddress,
    AddBridge,
    AddFdbEntry,
    AddNeighbour,
    AddNetns,
    AddVeth,
    AddVxlan,
    Dataplane,
    DelFdbEntry,
    DelNetns,
    MemoryDataplane,
    SetLinkMaster,
    SetLinkUp,
    Snapshot,
    plan_namespaces,
)
from meshnet.dataplane.api import NamespaceState
from meshnet.dataplane.ops import valid_netns


def overlay() -> tuple:
    return (
        AddNetns(name="ov"),
        AddNetns(name="c1"),
        AddBridge(netns="ov", name="br0", mtu=1450, mac="02:00:00:00:0b:01"),
        AddVxlan(netns="ov", name="vx0", vni=4097, local="192.0.2.1", mtu=1450, mac="02:00:00:00:0c:01"),
        SetLinkMaster(netns="ov", name="vx0", master="br0"),
        AddVeth(netns="ov", name="ve0", peer_netns="c1", peer_name="eth0", mtu=1450, mac="02:00:00:00:0d:01",
                peer_mac="02:42:0a:00:00:02"),
        SetLinkMaster(netns="ov", name="ve0", master="br0"),
        AddAddress(netns="ov", dev="br0", cidr="10.0.0.1/24"),
        SetLinkUp(netns="ov", name="vx0"),
        AddFdbEntry(netns="ov", dev="vx0", mac="02:42:0a:00:00:05", dst="192.0.2.2"),
        AddNeighbour(netns="ov", dev="vx0", ip="10.0.0.5", mac="02:42:0a:00:00:05"),
    )  # fmt: skip


GOLDEN = """\
netns c1
  link eth0 veth peer ov/ve0 mtu 1450 address 02:42:0a:00:00:02 state DOWN
  link lo loopback mtu 65536 address 00:00:00:00:00:00 state DOWN
netns ov
  link br0 bridge mtu 1450 address 02:00:00:00:0b:01 state DOWN
  link lo loopback mtu 65536 address 00:00:00:00:00:00 state DOWN
  link ve0 veth peer c1/eth0 mtu 1450 address 02:00:00:00:0d:01 master br0 state DOWN
  link vx0 vxlan id 4097 dstport 4789 local 192.0.2.1 nolearning proxy underlay - mtu 1450 address 02:00:00:00:0c:01 master br0 state UP
  addr 10.0.0.1/24 dev br0
  fdb 02:42:0a:00:00:05 dev vx0 dst 192.0.2.2 self permanent
  neigh 10.0.0.5 dev vx0 lladdr 02:42:0a:00:00:05 PERMANENT
"""


def test_dump_is_canonical_text() -> None:
    dp = MemoryDataplane()
    dp.apply(overlay())
    assert dp.dump() == GOLDEN
    assert dp.last_plan == overlay()
    assert isinstance(dp, Dataplane)


def test_refused_plan_keeps_state_and_last_plan() -> None:
    dp = MemoryDataplane()
    dp.apply(overlay())
    plan = (
        DelNetns(name="c1"),
        AddFdbEntry(netns="ov", dev="vx0", mac="02:42:0a:00:00:09", dst="192.0.2.9"),
        AddFdbEntry(netns="ov", dev="br0", mac="02:42:0a:00:00:09", dst="192.0.2.9"),
    )
    with pytest.raises(DataplaneError) as info:
        dp.apply(plan)
    assert (info.value.errno, info.value.index, info.value.op) == (errno.EOPNOTSUPP, 2, plan[2])
    assert "not a bridge" not in str(info.value) and "VXLAN" in str(info.value)
    assert dp.dump() == GOLDEN
    assert dp.last_plan == overlay()


def test_generated_macs_are_deterministic_and_local() -> None:
    plan = (
        AddNetns(name="n"),
        AddBridge(netns="n", name="br0"),
        AddVeth(netns="n", name="a", peer_netns="n", peer_name="b"),
    )
    one, two = MemoryDataplane(), MemoryDataplane()
    one.apply(plan)
    two.apply(plan)
    assert one.dump() == two.dump()
    macs = [link.mac for link in one.snapshot().namespaces["n"].links if link.kind != "loopback"]
    assert len(set(macs)) == 3
    assert all(int(mac[:2], 16) & 0b11 == 0b10 for mac in macs)  # locally administered, unicast


def test_seeded_with_a_path_namespace() -> None:
    container = "/proc/4242/ns/net"
    dp = MemoryDataplane(Snapshot({container: NamespaceState.fresh()}))
    dp.apply((AddNetns(name="ov"), AddVeth(netns="ov", name="ve0", peer_netns=container, peer_name="eth0")))
    assert dp.observe([container]).link(container, "eth0").peer_netns == "?"  # type: ignore[union-attr]
    assert dp.observe([container, "ov"]).link(container, "eth0").peer_netns == "ov"  # type: ignore[union-attr]


def test_deleting_an_underlay_namespace_deletes_its_vxlan_devices() -> None:
    dp = MemoryDataplane()
    dp.apply((AddNetns(name="u"), AddNetns(name="ov"), AddVxlan(netns="ov", name="vx0", vni=1, underlay="u")))
    dp.apply((DelNetns(name="u"),))
    assert dp.snapshot().link("ov", "vx0") is None


def test_vni_clash_only_on_one_underlay_port_and_family() -> None:
    dp = MemoryDataplane()
    dp.apply((AddNetns(name="u"), AddNetns(name="a"), AddVxlan(netns="a", name="vx0", vni=1)))
    dp.apply(
        (
            AddVxlan(netns="a", name="vx1", vni=1, underlay="u"),  # other underlay
            AddVxlan(netns="a", name="vx2", vni=1, dstport=4790),  # other port
            AddVxlan(netns="a", name="vx3", vni=1, local="2001:db8::1"),  # other family
        )
    )
    with pytest.raises(DataplaneError) as info:
        dp.apply((AddVxlan(netns="a", name="vx4", vni=1, local="192.0.2.1"),))
    assert info.value.is_exists()


def test_unknown_op_is_refused() -> None:
    with pytest.raises(DataplaneError) as info:
        MemoryDataplane().apply(("not an op",))  # type: ignore[arg-type]
    assert info.value.errno == errno.EOPNOTSUPP and info.value.index == 0


def test_plan_namespaces() -> None:
    assert plan_namespaces(overlay()) == ("c1", "ov")
    assert plan_namespaces((AddVxlan(netns="a", name="v", vni=1, underlay="u"),)) == ("a", "u")


def test_snapshot_helpers() -> None:
    dp = MemoryDataplane()
    dp.apply(overlay())
    snap = dp.snapshot()
    assert "ov" in snap and snap.get("nope") is None
    assert snap.restrict(["ov"]).namespaces.keys() == {"ov"}
    assert snap.link("ov", "nope") is None and snap.link("nope", "br0") is None
    assert snap.render() == GOLDEN


# --- DataplaneError -----------------------------------------------------------------------------


def test_dataplane_error_classification() -> None:
    op = DelFdbEntry(netns="a", dev="vx0", mac="02:00:00:00:00:01")
    assert DataplaneError(op, errno.ENOENT).is_not_found()
    assert DataplaneError(op, errno.ENODEV).is_not_found()
    assert not DataplaneError(op, errno.EEXIST).is_not_found()
    assert DataplaneError(op, errno.EEXIST).is_exists()
    error = DataplaneError(op, errno.EINVAL, "bad thing", index=3)
    assert isinstance(error, MeshnetError) and error.index == 3 and "bad thing" in str(error)
    assert DataplaneError(None, errno.EPERM).message == "Operation not permitted"


# --- op construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: AddBridge(netns="a", name="x" * 16),
        lambda: AddBridge(netns="a", name="br 0"),
        lambda: AddBridge(netns="a", name="br/0"),
        lambda: AddBridge(netns="../etc", name="br0"),
        lambda: AddBridge(netns="a/b", name="br0"),
        lambda: AddBridge(netns="", name="br0"),
        lambda: AddBridge(netns="a", name="br0", mtu=67),
        lambda: AddBridge(netns="a", name="br0", mac="01:00:5e:00:00:01"),  # multicast
        lambda: AddBridge(netns="a", name="br0", mac="00:00:00:00:00:00"),
        lambda: AddBridge(netns="a", name="br0", mac="02:00:00:00:00"),
        lambda: AddNetns(name="/run/netns/x"),
        lambda: DelNetns(name="/run/netns/x"),
        lambda: AddVxlan(netns="a", name="vx0", vni=1 << 24),
        lambda: AddVxlan(netns="a", name="vx0", vni=-1),
        lambda: AddVxlan(netns="a", name="vx0", vni=True),
        lambda: AddVxlan(netns="a", name="vx0", vni=1, dstport=0),
        lambda: AddVxlan(netns="a", name="vx0", vni=1, local="10.0.0.256"),
        lambda: AddVxlan(netns="a", name="vx0", vni=1, learning=1),
        lambda: AddVeth(netns="a", name="ve0", peer_netns="a", peer_name="ve0"),
        lambda: SetLinkMaster(netns="a", name="br0", master="br0"),
        lambda: AddAddress(netns="a", dev="br0", cidr="10.0.0.1"),
        lambda: AddAddress(netns="a", dev="br0", cidr="10.0.0.1/33"),
        lambda: AddFdbEntry(netns="a", dev="vx0", mac="01:00:5e:00:00:01", dst="192.0.2.1"),
        lambda: AddFdbEntry(netns="a", dev="vx0", mac="02:00:00:00:00:01", dst="192.0.2"),
        lambda: AddNeighbour(netns="a", dev="vx0", ip="224.0.0.1", mac="02:00:00:00:00:01"),
        lambda: AddNeighbour(netns="a", dev="vx0", ip="ff02::1", mac="02:00:00:00:00:01"),
        lambda: AddNeighbour(netns="a", dev="vx0", ip="010.0.0.1", mac="02:00:00:00:00:01"),
    ],
)
def test_bad_op_values_raise_value_error(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        make()


def test_op_values_are_canonicalised() -> None:
    op = AddFdbEntry(netns="a", dev="vx0", mac="02:42:0A:00:00:0F", dst="2001:DB8:0::2")
    assert (op.mac, op.dst) == ("02:42:0a:00:00:0f", "2001:db8::2")
    assert AddAddress(netns="a", dev="br0", cidr="fd00:0::1/64").cidr == "fd00::1/64"
    assert (
        AddNeighbour(netns="a", dev="vx0", ip="10.0.0.5", mac="AA:BB:CC:DD:EE:FF").mac == "aa:bb:cc:dd:ee:ff"
    )
    assert valid_netns("ov-1") and valid_netns("/proc/1/ns/net")
    assert not valid_netns("..") and not valid_netns("a/b") and not valid_netns(3)
    with pytest.raises(AttributeError):
        op.mac = "02:00:00:00:00:01"  # type: ignore[misc]
