"""The dataplane contract: checks every ``Dataplane`` implementation must pass (style.md 3.4, item 9).

Each ``check_*`` function takes a ``Harness`` (a dataplane, a unique namespace prefix, and whether the
implementation is all-or-nothing) and asserts one part of the contract written in
``meshnet/dataplane/api.py``. ``CHECKS`` lists them; tests/conformance/test_dataplane.py runs every check
against ``MemoryDataplane`` and, as root, against ``NetlinkDataplane`` in fresh namespaces.

Expected state is written as the canonical text of ``Snapshot.render()`` so a failure shows a readable
diff. Every link a check compares gets an explicit MAC (the kernel would pick a random one). Remote
VTEPs and local addresses come from TEST-NET-1 (192.0.2.0/24) and are never reached: the underlay
namespace has no routes and nothing sends traffic.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from meshnet.core.errors import DataplaneError
from meshnet.dataplane import (
    AddAddress,
    AddBridge,
    AddFdbEntry,
    AddNeighbour,
    AddNetns,
    AddVeth,
    AddVxlan,
    ApplyResult,
    Dataplane,
    DelAddress,
    DelFdbEntry,
    DelLink,
    DelNeighbour,
    DelNetns,
    MemoryDataplane,
    Op,
    Plan,
    SetLinkDown,
    SetLinkMaster,
    SetLinkMtu,
    SetLinkUp,
    Snapshot,
)
from meshnet.dataplane.api import NamespaceState

#: Link names the checks use; tests/conformance/test_dataplane.py asserts none shows up outside the
#: test namespaces.
LINK_NAMES = ("br0", "br1", "vx0", "vx1", "ve0", "ve1", "eth0", "eth1")

MAC_BR = "02:00:00:00:0b:01"
MAC_VX = "02:00:00:00:0c:01"
MAC_VE = "02:00:00:00:0d:01"
MAC_ETH = "02:42:0a:00:00:02"


@dataclass
class Harness:
    """One implementation under test. ``prefix`` makes every namespace name unique to the test; the
    namespace ``ns("u")`` (the VXLAN underlay) exists before each check starts."""

    dp: Dataplane
    prefix: str
    atomic: bool

    def ns(self, logical: str) -> str:
        return self.prefix + logical

    def apply(self, *ops: Op) -> ApplyResult:
        return self.dp.apply(tuple(ops))

    def observe(self, *logical: str) -> Snapshot:
        return self.dp.observe(self.ns(x) for x in logical)

    def text(self, *logical: str) -> str:
        return self.observe(*logical).render()


def refused(h: Harness, plan: Plan) -> DataplaneError:
    """Apply ``plan``, which must be refused; the error."""
    with pytest.raises(DataplaneError) as info:
        h.dp.apply(plan)
    return info.value


def without_macs(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with every link MAC blanked (for links whose MAC the kernel chose)."""
    return Snapshot(
        {
            ns: replace(st, links=tuple(replace(link, mac="") for link in st.links))
            for ns, st in snapshot.namespaces.items()
        }
    )


def overlay_plan(h: Harness, *, vni: int = 42) -> Plan:
    """The per-network namespace libnetwork's overlay builds (libnetwork.md 3.2-3.3): a bridge with the
    gateway address, a VXLAN port (nolearning, proxy), and a container's veth."""
    o, c, u = h.ns("o"), h.ns("c"), h.ns("u")
    return (
        AddNetns(name=o),
        AddNetns(name=c),
        AddBridge(netns=o, name="br0", mtu=1450, mac=MAC_BR),
        AddVxlan(netns=o, name="vx0", vni=vni, local="192.0.2.1", mtu=1450, mac=MAC_VX, underlay=u),
        SetLinkMaster(netns=o, name="vx0", master="br0"),
        AddVeth(netns=o, name="ve0", peer_netns=c, peer_name="eth0", mtu=1450, mac=MAC_VE, peer_mac=MAC_ETH),
        SetLinkMaster(netns=o, name="ve0", master="br0"),
        AddAddress(netns=o, dev="br0", cidr="10.0.0.1/24"),
        AddAddress(netns=c, dev="eth0", cidr="10.0.0.2/24"),
        SetLinkUp(netns=o, name="br0"),
        SetLinkUp(netns=o, name="vx0"),
        SetLinkUp(netns=o, name="ve0"),
        SetLinkUp(netns=c, name="eth0"),
    )


def overlay_text(h: Harness, *, vni: int = 42) -> str:
    o, c, u = h.ns("o"), h.ns("c"), h.ns("u")
    lo = "  link lo loopback mtu 65536 address 00:00:00:00:00:00 state DOWN\n"
    return (
        f"netns {c}\n"
        f"  link eth0 veth peer {o}/ve0 mtu 1450 address {MAC_ETH} state UP\n"
        f"{lo}"
        f"  addr 10.0.0.2/24 dev eth0\n"
        f"netns {o}\n"
        f"  link br0 bridge mtu 1450 address {MAC_BR} state UP\n"
        f"{lo}"
        f"  link ve0 veth peer {c}/eth0 mtu 1450 address {MAC_VE} master br0 state UP\n"
        f"  link vx0 vxlan id {vni} dstport 4789 local 192.0.2.1 nolearning proxy underlay {u} mtu 1450 "
        f"address {MAC_VX} master br0 state UP\n"
        f"  addr 10.0.0.1/24 dev br0\n"
        f"netns {u}\n"
        f"{lo}"
    )


def peers(h: Harness, count: int, *, dst: str = "192.0.2.2") -> Plan:
    """FDB + neighbour entries for ``count`` remote endpoints on vx0 (MAC derived from the IP)."""
    o = h.ns("o")
    ops: list[Op] = []
    for i in range(count):
        ip = f"10.0.{1 + i // 250}.{1 + i % 250}"
        mac = "02:42:" + ":".join(f"{int(x):02x}" for x in ip.split("."))
        ops.append(AddFdbEntry(netns=o, dev="vx0", mac=mac, dst=dst))
        ops.append(AddNeighbour(netns=o, dev="vx0", ip=ip, mac=mac))
    return tuple(ops)


# --- checks -------------------------------------------------------------------------------------


def check_overlay_topology(h: Harness) -> None:
    """Bridge + VXLAN + veth across two namespaces: observe() shows exactly what the plan asked."""
    result = h.dp.apply(overlay_plan(h))
    assert result.applied == len(overlay_plan(h))
    assert h.text("o", "c", "u") == overlay_text(h)


def check_entries_round_trip(h: Harness) -> None:
    """FDB and neighbour entries: add, replace (new remote, new MAC, per-entry VNI, static), delete."""
    h.dp.apply(overlay_plan(h))
    o = h.ns("o")
    h.apply(
        AddFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:05", dst="192.0.2.2"),
        AddFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:06", dst="192.0.2.3", vni=7),
        AddFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:07", dst="192.0.2.3", vni=42, permanent=False),
        AddNeighbour(netns=o, dev="vx0", ip="10.0.0.5", mac="02:42:0a:00:00:05"),
        AddNeighbour(netns=o, dev="vx0", ip="10.0.0.6", mac="02:42:0a:00:00:06"),
        AddNeighbour(netns=o, dev="br0", ip="fd00::6", mac="02:42:0a:00:00:06"),
    )
    state = h.observe("o").get(o)
    assert state is not None
    assert "\n".join(line for line in state_lines(state) if "fdb" in line or "neigh" in line) == "\n".join(
        [
            "fdb 02:42:0a:00:00:05 dev vx0 dst 192.0.2.2 self permanent",
            "fdb 02:42:0a:00:00:06 dev vx0 dst 192.0.2.3 vni 7 self permanent",
            "fdb 02:42:0a:00:00:07 dev vx0 dst 192.0.2.3 self static",  # vni 42 is the device's own
            "neigh fd00::6 dev br0 lladdr 02:42:0a:00:00:06 PERMANENT",
            "neigh 10.0.0.5 dev vx0 lladdr 02:42:0a:00:00:05 PERMANENT",
            "neigh 10.0.0.6 dev vx0 lladdr 02:42:0a:00:00:06 PERMANENT",
        ]
    )
    # Replace: a new remote and a new MAC, whatever was there (libnetwork's create-exclusive failed here).
    h.apply(
        AddFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:05", dst="192.0.2.9"),
        AddFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:07", dst="192.0.2.9"),
        AddNeighbour(netns=o, dev="vx0", ip="10.0.0.5", mac="02:42:0a:00:00:55"),
        DelFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:06"),
        DelNeighbour(netns=o, dev="vx0", ip="10.0.0.6"),
        DelNeighbour(netns=o, dev="br0", ip="fd00::6"),
    )
    state = h.observe("o").get(o)
    assert state is not None
    assert [line for line in state_lines(state) if "fdb" in line or "neigh" in line] == [
        "fdb 02:42:0a:00:00:05 dev vx0 dst 192.0.2.9 self permanent",
        "fdb 02:42:0a:00:00:07 dev vx0 dst 192.0.2.9 self permanent",
        "neigh 10.0.0.5 dev vx0 lladdr 02:42:0a:00:00:55 PERMANENT",
    ]
    h.apply(
        DelFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:05"),
        DelFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:07"),
        DelNeighbour(netns=o, dev="vx0", ip="10.0.0.5"),
    )
    assert h.text("o", "c", "u") == overlay_text(h)


def state_lines(state: NamespaceState) -> list[str]:
    return [line.strip() for line in Snapshot({"x": state}).render().splitlines()[1:]]


def check_delete_missing_is_success(h: Harness) -> None:
    """Deleting what is not there succeeds and changes nothing: entries, addresses, links, namespaces,
    also inside a namespace or on a device that does not exist."""
    h.dp.apply(overlay_plan(h))
    o, gone = h.ns("o"), h.ns("gone")
    before = h.observe("o", "c", "u", "gone")
    plan = (
        DelFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:99"),
        DelNeighbour(netns=o, dev="vx0", ip="10.0.0.99"),
        DelNeighbour(netns=o, dev="vx0", ip="fd00::99"),
        DelAddress(netns=o, dev="br0", cidr="10.9.9.9/24"),
        DelLink(netns=o, name="nothere"),
        DelFdbEntry(netns=o, dev="nothere", mac="02:42:0a:00:00:99"),
        DelNeighbour(netns=o, dev="nothere", ip="10.0.0.99"),
        DelAddress(netns=o, dev="nothere", cidr="10.9.9.9/24"),
        DelLink(netns=gone, name="br0"),
        DelFdbEntry(netns=gone, dev="vx0", mac="02:42:0a:00:00:99"),
        DelNetns(name=gone),
    )
    assert h.dp.apply(plan).applied == len(plan)
    assert h.observe("o", "c", "u", "gone") == before
    assert h.dp.apply(plan).applied == len(plan)


#: (description, the failing op for a given harness, expected errno). Each is appended to a plan that
#: first creates a namespace and a bridge and adds entries, so "nothing half-done" is visible.
FAILING_OPS: tuple[tuple[str, Callable[[Harness], Op], int], ...] = (
    (
        "fdb on a bridge",
        lambda h: AddFdbEntry(netns=h.ns("o"), dev="br0", mac="02:42:0a:00:00:05", dst="192.0.2.2"),
        errno.EOPNOTSUPP,
    ),
    (
        "fdb on a missing device",
        lambda h: AddFdbEntry(netns=h.ns("o"), dev="vx9", mac="02:42:0a:00:00:05", dst="192.0.2.2"),
        errno.ENODEV,
    ),
    (
        "fdb dst of the wrong family",
        lambda h: AddFdbEntry(netns=h.ns("o"), dev="vx0", mac="02:42:0a:00:00:05", dst="2001:db8::2"),
        errno.EAFNOSUPPORT,
    ),
    (
        "master that is a veth",
        lambda h: SetLinkMaster(netns=h.ns("o"), name="vx0", master="ve0"),
        errno.EOPNOTSUPP,
    ),
    (
        "bridge as a bridge port",
        lambda h: SetLinkMaster(netns=h.ns("o"), name="br1", master="br0"),
        errno.EINVAL,
    ),
    (
        "address in a missing namespace",
        lambda h: AddAddress(netns=h.ns("gone"), dev="br0", cidr="10.0.0.1/24"),
        errno.ENOENT,
    ),
    (
        "address on a missing device",
        lambda h: AddAddress(netns=h.ns("o"), dev="nothere", cidr="10.0.0.1/24"),
        errno.ENODEV,
    ),
    (
        "VNI clash on one underlay",
        lambda h: AddVxlan(netns=h.ns("n"), name="vx1", vni=42, underlay=h.ns("u")),
        errno.EEXIST,
    ),
    (
        "underlay namespace missing",
        lambda h: AddVxlan(netns=h.ns("n"), name="vx1", vni=43, underlay=h.ns("gone")),
        errno.ENOENT,
    ),
    (
        "veth peer namespace missing",
        lambda h: AddVeth(netns=h.ns("n"), name="ve1", peer_netns=h.ns("gone"), peer_name="eth1"),
        errno.ENOENT,
    ),
    ("deleting lo", lambda h: DelLink(netns=h.ns("o"), name="lo"), errno.EOPNOTSUPP),
    (
        "neighbour on lo",
        lambda h: AddNeighbour(netns=h.ns("o"), dev="lo", ip="10.0.0.5", mac="02:42:0a:00:00:05"),
        errno.EINVAL,
    ),
    (
        "mtu of a missing device",
        lambda h: SetLinkMtu(netns=h.ns("o"), name="nothere", mtu=1400),
        errno.ENODEV,
    ),
)


def check_failing_plan_changes_nothing(h: Harness) -> None:
    """A plan with an op the rules forbid is refused as a whole, before anything changes (the memory
    fake is atomic; NetlinkDataplane validates on it first), and the error names the op and errno."""
    h.dp.apply(overlay_plan(h))
    o, n = h.ns("o"), h.ns("n")
    h.apply(AddBridge(netns=o, name="br1", mac="02:00:00:00:0b:02"))
    before = h.observe("o", "c", "u", "n", "gone")
    for what, make, expected in FAILING_OPS:
        bad = make(h)
        plan = (
            AddNetns(name=n),
            AddBridge(netns=n, name="br0", mac=MAC_BR),
            AddFdbEntry(netns=o, dev="vx0", mac="02:42:0a:00:00:33", dst="192.0.2.3"),
            AddNeighbour(netns=o, dev="vx0", ip="10.0.0.33", mac="02:42:0a:00:00:33"),
            SetLinkDown(netns=o, name="br0"),
            bad,
        )
        error = refused(h, plan)
        assert (error.errno, error.index, error.op) == (expected, len(plan) - 1, bad), what
        assert h.observe("o", "c", "u", "n", "gone") == before, what


def check_kernel_refusal_then_replan_converges(h: Harness) -> None:
    """An op refused where validation cannot see the cause (a VNI clash with a device in a namespace the
    plan does not name) raises with its index; the state is the old one (atomic implementations) or
    the old one plus exactly the ops before it (NetlinkDataplane). Removing the cause and applying the
    same plan again converges to the desired state."""
    x, y, u = h.ns("x"), h.ns("y"), h.ns("u")
    h.apply(AddNetns(name=x), AddVxlan(netns=x, name="vx0", vni=77, underlay=u, mac=MAC_VX))
    plan = (
        AddNetns(name=y),
        AddBridge(netns=y, name="br0", mtu=1450, mac=MAC_BR),
        AddVxlan(netns=y, name="vx0", vni=77, underlay=u, mtu=1450, mac=MAC_VX),
        SetLinkMaster(netns=y, name="vx0", master="br0"),
        AddFdbEntry(netns=y, dev="vx0", mac="02:42:0a:00:00:05", dst="192.0.2.2"),
    )
    before = h.observe("y", "u")
    error = refused(h, plan)
    assert (error.errno, error.index) == (errno.EEXIST, 2)
    after = h.observe("y", "u")
    if h.atomic:
        assert after == before
    else:
        prefix = MemoryDataplane(before)
        prefix.apply(plan[: error.index])
        assert after == prefix.observe([y, u])
    h.apply(DelNetns(name=x))
    h.dp.apply(plan)
    assert h.text("y") == (
        f"netns {y}\n"
        f"  link br0 bridge mtu 1450 address {MAC_BR} state DOWN\n"
        "  link lo loopback mtu 65536 address 00:00:00:00:00:00 state DOWN\n"
        f"  link vx0 vxlan id 77 dstport 4789 nolearning proxy underlay ? mtu 1450 address {MAC_VX} "
        "master br0 state DOWN\n"
        "  fdb 02:42:0a:00:00:05 dev vx0 dst 192.0.2.2 self permanent\n"
    )


def check_idempotent(h: Harness) -> None:
    """Applying the same plan again changes nothing, entries included."""
    plan = overlay_plan(h) + peers(h, 20)
    h.dp.apply(plan)
    first = h.observe("o", "c", "u")
    h.dp.apply(plan)
    assert h.observe("o", "c", "u") == first
    assert len(first.namespaces[h.ns("o")].fdb) == 20


def check_replace_keeps_or_recreates(h: Harness) -> None:
    """Add* on an existing object: same immutable attributes update MAC/MTU in place (master and up
    state stay); a different VNI recreates the VXLAN device (master, up state and entries go)."""
    h.dp.apply(overlay_plan(h) + peers(h, 2))
    o, c = h.ns("o"), h.ns("c")
    h.apply(
        AddBridge(netns=o, name="br0", mac="02:00:00:00:0b:09"),
        AddVeth(netns=o, name="ve0", peer_netns=c, peer_name="eth0", mac="02:00:00:00:0d:09", mtu=1400),
        AddVxlan(netns=o, name="vx0", vni=42, local="192.0.2.1", mac=MAC_VX, mtu=1400, underlay=h.ns("u")),
    )
    text = h.text("o", "c")
    assert f"link ve0 veth peer {c}/eth0 mtu 1400 address 02:00:00:00:0d:09 master br0 state UP" in text
    assert f"link eth0 veth peer {o}/ve0 mtu 1400 address {MAC_ETH} state UP" in text
    assert "link br0 bridge mtu 1450 address 02:00:00:00:0b:09 state UP" in text  # pinned at 1450
    assert "master br0 state UP" in text.split("link vx0")[1].splitlines()[0]
    kept = h.observe("o").get(o)
    assert kept is not None and (len(kept.fdb), len(kept.neighbours)) == (2, 2)
    h.apply(AddVxlan(netns=o, name="vx0", vni=43, mac=MAC_VX, underlay=h.ns("u")))
    state = h.observe("o").get(o)
    assert state is not None
    vx = state.link("vx0")
    assert vx is not None
    assert (vx.vni, vx.local, vx.master, vx.up, vx.mtu) == (43, None, None, False, 1500)
    assert state.fdb == () and [n.dev for n in state.neighbours] == []
    h.apply(AddBridge(netns=o, name="vx0", mac=MAC_VX))  # another kind under the same name
    replaced = h.observe("o").link(o, "vx0")
    assert replaced is not None and replaced.kind == "bridge"


def check_link_down_flushes_neighbours(h: Harness) -> None:
    """A link going down loses its neighbour entries and IPv6 addresses; IPv4 addresses and FDB stay."""
    h.dp.apply(overlay_plan(h) + peers(h, 3))
    o = h.ns("o")
    h.apply(
        AddAddress(netns=o, dev="vx0", cidr="fd00::1/64"), AddAddress(netns=o, dev="vx0", cidr="10.9.0.1/24")
    )
    h.apply(SetLinkDown(netns=o, name="vx0"))
    state = h.observe("o").get(o)
    assert state is not None
    assert state.neighbours == ()
    assert len(state.fdb) == 3
    assert [(a.dev, a.cidr) for a in state.addresses] == [("br0", "10.0.0.1/24"), ("vx0", "10.9.0.1/24")]
    h.apply(SetLinkUp(netns=o, name="vx0"), *peers(h, 3))
    state = h.observe("o").get(o)
    assert state is not None and len(state.neighbours) == 3


def check_addresses(h: Harness) -> None:
    """Addresses: IPv4 keys on address and prefix, IPv6 on the address (a new prefix replaces it)."""
    h.dp.apply(overlay_plan(h))
    o = h.ns("o")
    h.apply(
        AddAddress(netns=o, dev="br0", cidr="10.0.0.1/16"),
        AddAddress(netns=o, dev="br0", cidr="fd00::1/64"),
        AddAddress(netns=o, dev="br0", cidr="fd00::1/48"),
        AddAddress(netns=o, dev="br0", cidr="fd00::1/48"),
    )
    state = h.observe("o").get(o)
    assert state is not None
    assert [a.cidr for a in state.addresses] == ["10.0.0.1/16", "10.0.0.1/24", "fd00::1/48"]
    h.apply(
        DelAddress(netns=o, dev="br0", cidr="10.0.0.1/16"), DelAddress(netns=o, dev="br0", cidr="fd00::1/48")
    )
    assert h.text("o", "c", "u") == overlay_text(h)


def check_address_removal_rules(h: Harness) -> None:
    """Deleting an IPv4 primary deletes its secondaries (same subnet and prefix length); deleting a
    link's last IPv4 address flushes its IPv4 neighbour entries (IPv6 ones stay)."""
    h.dp.apply(overlay_plan(h))
    o = h.ns("o")
    h.apply(
        AddAddress(netns=o, dev="br0", cidr="10.0.0.2/24"),
        AddAddress(netns=o, dev="br0", cidr="10.1.0.1/16"),
        AddNeighbour(netns=o, dev="br0", ip="10.0.0.9", mac="02:42:0a:00:00:09"),
        AddNeighbour(netns=o, dev="br0", ip="fd00::9", mac="02:42:0a:00:00:09"),
    )
    h.apply(DelAddress(netns=o, dev="br0", cidr="10.0.0.1/24"))
    state = h.observe("o").get(o)
    assert state is not None
    assert [a.cidr for a in state.addresses] == ["10.1.0.1/16"]
    assert [n.ip for n in state.neighbours] == ["10.0.0.9", "fd00::9"]
    h.apply(DelAddress(netns=o, dev="br0", cidr="10.1.0.1/16"))
    state = h.observe("o").get(o)
    assert state is not None
    assert (state.addresses, [n.ip for n in state.neighbours]) == ((), ["fd00::9"])


def check_bridge_mtu_follows_ports(h: Harness) -> None:
    """A bridge without an explicit MTU takes its smallest port's, and 1500 again without ports; an
    explicit MTU stays whatever the ports do."""
    o = h.ns("o")
    h.apply(
        AddNetns(name=o),
        AddBridge(netns=o, name="br1", mac=MAC_BR),
        AddVxlan(netns=o, name="vx1", vni=51, mtu=1400, mac=MAC_VX, underlay=h.ns("u")),
        SetLinkMaster(netns=o, name="vx1", master="br1"),
    )
    assert h.observe("o").link(o, "br1").mtu == 1400  # type: ignore[union-attr]
    h.apply(SetLinkMtu(netns=o, name="vx1", mtu=1300))
    assert h.observe("o").link(o, "br1").mtu == 1300  # type: ignore[union-attr]
    h.apply(SetLinkMaster(netns=o, name="vx1", master=None))
    assert h.observe("o").link(o, "br1").mtu == 1500  # type: ignore[union-attr]
    h.apply(SetLinkMtu(netns=o, name="br1", mtu=1450), SetLinkMaster(netns=o, name="vx1", master="br1"))
    assert h.observe("o").link(o, "br1").mtu == 1450  # type: ignore[union-attr]


def check_deletes_cascade(h: Harness) -> None:
    """Deleting a veth end deletes its peer in the other namespace; deleting a bridge frees its ports;
    deleting a namespace deletes the veth peers it had elsewhere at once."""
    h.dp.apply(overlay_plan(h))
    o, c = h.ns("o"), h.ns("c")
    h.apply(DelLink(netns=c, name="eth0"))
    assert h.observe("o").link(o, "ve0") is None
    h.apply(
        AddVeth(netns=o, name="ve0", peer_netns=c, peer_name="eth0", mac=MAC_VE, peer_mac=MAC_ETH),
        SetLinkMaster(netns=o, name="ve0", master="br0"),
    )
    h.apply(DelLink(netns=o, name="br0"))
    state = h.observe("o").get(o)
    assert state is not None
    assert [(link.name, link.master) for link in state.links] == [("lo", None), ("ve0", None), ("vx0", None)]
    h.apply(DelNetns(name=o))
    snap = h.observe("o", "c")
    assert h.ns("o") not in snap
    assert [link.name for link in snap.namespaces[c].links] == ["lo"]


def check_scope(h: Harness) -> None:
    """observe() shows only the namespaces asked for; peers and underlays outside the scope show as
    ``?``; a namespace that does not exist is simply absent."""
    h.dp.apply(overlay_plan(h))
    o = h.ns("o")
    snap = h.observe("o", "missing")
    assert list(snap.namespaces) == [o]
    ve0, vx0 = snap.link(o, "ve0"), snap.link(o, "vx0")
    assert ve0 is not None and (ve0.peer_netns, ve0.peer_name) == ("?", None)
    assert vx0 is not None and vx0.underlay == "?"


def check_bulk_entries(h: Harness) -> None:
    """A plan with thousands of entries goes through, and deleting them leaves none."""
    h.dp.apply(overlay_plan(h))
    plan = peers(h, 1500)
    assert h.dp.apply(plan).applied == 3000
    state = h.observe("o").get(h.ns("o"))
    assert state is not None and (len(state.fdb), len(state.neighbours)) == (1500, 1500)
    o = h.ns("o")
    deletes = tuple(
        DelFdbEntry(netns=o, dev="vx0", mac=op.mac)
        if isinstance(op, AddFdbEntry)
        else DelNeighbour(netns=o, dev="vx0", ip=op.ip)  # type: ignore[union-attr]
        for op in plan
    )
    h.dp.apply(deletes)
    assert h.text("o", "c", "u") == overlay_text(h)


def check_fresh_namespace_and_paths(h: Harness) -> None:
    """A new namespace holds ``lo`` only; namespaces can be named by path as well as by name."""
    n = h.ns("n")
    h.apply(AddNetns(name=n), AddNetns(name=n))
    assert h.observe("n").namespaces[n] == NamespaceState.fresh()
    if isinstance(h.dp, MemoryDataplane):
        return  # the fake cannot know that a name and a path are one namespace
    path = f"/run/netns/{n}"
    h.apply(AddBridge(netns=path, name="br0", mac=MAC_BR), SetLinkUp(netns=path, name="lo"))
    link = h.observe("n").link(n, "br0")
    assert link is not None and link.mac == MAC_BR
    assert h.dp.observe([path]).namespaces[path].link("lo").up  # type: ignore[union-attr]


CHECKS: tuple[Callable[[Harness], None], ...] = (
    check_overlay_topology,
    check_entries_round_trip,
    check_delete_missing_is_success,
    check_failing_plan_changes_nothing,
    check_kernel_refusal_then_replan_converges,
    check_idempotent,
    check_replace_keeps_or_recreates,
    check_link_down_flushes_neighbours,
    check_addresses,
    check_address_removal_rules,
    check_bridge_mtu_follows_ports,
    check_deletes_cascade,
    check_scope,
    check_bulk_entries,
    check_fresh_namespace_and_paths,
)
