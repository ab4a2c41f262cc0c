"""The overlay reconciler on hand-written views: exact plans, idempotence, drift repair, adoption."""

from __future__ import annotations

from dataclasses import replace

from meshnet.dataplane import (
    AddAddress,
    AddBridge,
    AddFdbEntry,
    AddNeighbour,
    AddNetns,
    AddVeth,
    AddVxlan,
    DelAddress,
    DelFdbEntry,
    DelLink,
    DelNeighbour,
    DelNetns,
    MemoryDataplane,
    SetLinkDown,
    SetLinkMaster,
    SetLinkUp,
)
from meshnet.dataplane.api import NamespaceState, Snapshot
from meshnet.overlay import (
    bridge_mac,
    desired,
    is_managed_netns,
    overlay_netns,
    plan,
    sandbox_netns,
    veth_name,
)

from .helpers import NET_A, NET_B, ep, reconcile, replan, sandbox, view

OV_A = "mn-ov-4097"
OV_B = "mn-ov-4098"

LOCAL1 = ep(2, "h1")
REMOTE3 = ep(3, "h2")
REMOTE4 = ep(4, "h3")


def base_view():
    return view([LOCAL1, REMOTE3, REMOTE4], [sandbox("web", (LOCAL1, "eth0"))])


def test_names():
    assert overlay_netns("h1-", 4097) == "h1-ov-4097"
    assert sandbox_netns("h1-", "web") == "h1-sb-web"
    assert veth_name("0123456789abcdef01234567") == "ve-01234567"
    assert is_managed_netns("h1-", "h1-ov-4097")
    assert is_managed_netns("h1-", "h1-sb-web")
    assert not is_managed_netns("h1-", "h11-ov-4097")
    assert not is_managed_netns("h1-", "h1-ov-x")
    assert not is_managed_netns("h1-", "h1-other")
    assert not is_managed_netns("h1-", "/run/netns/h1-sb-web")


def test_first_join_creates_the_whole_overlay_in_order():
    d = desired(base_view())
    ops = plan(d, MemoryDataplane().observe(d.scope()))
    ve = veth_name(LOCAL1.id)
    assert ops == (
        AddNetns(name="mn-sb-web"),
        SetLinkUp(netns="mn-sb-web", name="lo"),
        AddNetns(name=OV_A),
        AddBridge(netns=OV_A, name="br0", mtu=1450, mac=bridge_mac(NET_A.id)),
        AddAddress(netns=OV_A, dev="br0", cidr="10.0.1.1/24"),
        SetLinkUp(netns=OV_A, name="br0"),
        AddVxlan(netns=OV_A, name="vxlan0", vni=4097, dstport=4789, learning=False, proxy=True, mtu=1450),
        SetLinkMaster(netns=OV_A, name="vxlan0", master="br0"),
        SetLinkUp(netns=OV_A, name="vxlan0"),
        AddVeth(netns=OV_A, name=ve, peer_netns="mn-sb-web", peer_name="eth0", mtu=1450, peer_mac=LOCAL1.mac),
        SetLinkMaster(netns=OV_A, name=ve, master="br0"),
        SetLinkUp(netns=OV_A, name=ve),
        AddAddress(netns="mn-sb-web", dev="eth0", cidr="10.0.1.2/24"),
        SetLinkUp(netns="mn-sb-web", name="eth0"),
        AddNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.3", mac=REMOTE3.mac),
        AddNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.4", mac=REMOTE4.mac),
        AddFdbEntry(netns=OV_A, dev="vxlan0", mac=REMOTE3.mac, dst="192.0.2.2"),
        AddFdbEntry(netns=OV_A, dev="vxlan0", mac=REMOTE4.mac, dst="192.0.2.3"),
    )
    # The VXLAN device's socket is in the agent's namespace (created there and moved in).
    assert next(op for op in ops if isinstance(op, AddVxlan)).underlay is None


def test_apply_then_replan_is_empty_and_the_state_is_as_documented():
    dp = MemoryDataplane()
    reconcile(dp, base_view())
    assert replan(dp, base_view()) == ()
    dump = dp.dump()
    assert "link vxlan0 vxlan id 4097 dstport 4789 nolearning proxy underlay - mtu 1450" in dump
    assert f"fdb {REMOTE3.mac} dev vxlan0 dst 192.0.2.2 self permanent" in dump
    assert f"neigh 10.0.1.4 dev vxlan0 lladdr {REMOTE4.mac} PERMANENT" in dump
    assert f"link eth0 veth peer {OV_A}/{veth_name(LOCAL1.id)} mtu 1450 address {LOCAL1.mac} state UP" in dump
    assert "addr 10.0.1.2/24 dev eth0" in dump
    # The local endpoint gets no entries of its own.
    assert "10.0.1.2 dev vxlan0" not in dump


def test_no_overlay_without_a_joined_local_endpoint():
    unjoined = view([LOCAL1, REMOTE3], [sandbox("web")])
    d = desired(unjoined)
    assert d.overlays == {}
    assert d.managed_sandboxes == frozenset({"mn-sb-web"})


def test_remote_endpoints_get_entries_before_they_are_joined():
    v = view([LOCAL1, REMOTE3, replace(REMOTE4, sandbox="")], [sandbox("web", (LOCAL1, "eth0"))])
    ov = desired(v).overlays[OV_A]
    assert dict(ov.fdb) == {REMOTE3.mac: "192.0.2.2", REMOTE4.mac: "192.0.2.3"}
    assert dict(ov.neighbours) == {"10.0.1.3": REMOTE3.mac, "10.0.1.4": REMOTE4.mac}
    # ... but a host with only unjoined local endpoints has no overlay at all.
    assert desired(view([replace(LOCAL1, sandbox=""), REMOTE3], [sandbox("web")])).overlays == {}


def test_a_remote_endpoint_that_disappears_loses_exactly_its_entries():
    dp = MemoryDataplane()
    reconcile(dp, base_view())
    smaller = view([LOCAL1, REMOTE3], [sandbox("web", (LOCAL1, "eth0"))])
    assert replan(dp, smaller) == (
        DelFdbEntry(netns=OV_A, dev="vxlan0", mac=REMOTE4.mac),
        DelNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.4"),
    )
    reconcile(dp, smaller)
    assert replan(dp, smaller) == ()


def test_a_remote_endpoint_that_moves_hosts_gets_its_fdb_entry_replaced():
    dp = MemoryDataplane()
    reconcile(dp, base_view())
    moved = replace(REMOTE4, host="h2", vtep="192.0.2.2")
    v = view([LOCAL1, REMOTE3, moved], [sandbox("web", (LOCAL1, "eth0"))])
    assert replan(dp, v) == (AddFdbEntry(netns=OV_A, dev="vxlan0", mac=REMOTE4.mac, dst="192.0.2.2"),)


def test_last_leave_removes_the_overlay_namespace_and_the_sandbox_keeps_lo():
    dp = MemoryDataplane()
    reconcile(dp, base_view())
    left = view([LOCAL1, REMOTE3, REMOTE4], [sandbox("web")])
    assert replan(dp, left) == (DelNetns(name=OV_A),)
    reconcile(dp, left)
    assert dp.namespaces() == ("mn-sb-web",)
    state = dp.observe(["mn-sb-web"]).get("mn-sb-web")
    assert [link.name for link in state.links] == ["lo"]  # eth0 went with its ve- end
    assert replan(dp, left) == ()


def test_a_removed_sandbox_namespace_is_deleted_but_foreign_namespaces_are_not():
    dp = MemoryDataplane(Snapshot({"other": NamespaceState.fresh(), "mn-custom": NamespaceState.fresh()}))
    reconcile(dp, base_view())
    gone = view([LOCAL1, REMOTE3], [])
    assert replan(dp, gone) == (DelNetns(name=OV_A), DelNetns(name="mn-sb-web"))
    reconcile(dp, gone)
    assert dp.namespaces() == ("mn-custom", "other")


def test_two_networks_in_one_sandbox():
    b5 = ep(5, "h1", NET_B, ipv6="fd00:2::5")
    b6 = ep(6, "h2", NET_B, ipv6="fd00:2::6")
    v = view([LOCAL1, REMOTE3, b5, b6], [sandbox("web", (LOCAL1, "eth0"), (b5, "eth1"))])
    dp = MemoryDataplane()
    d, _ = reconcile(dp, v)
    assert set(d.overlays) == {OV_A, OV_B}
    dump = dp.dump()
    assert "addr fd00:2::5/64 dev eth1" in dump and "addr 10.0.2.5/24 dev eth1" in dump
    assert "link vxlan0 vxlan id 4098 dstport 4790 nolearning proxy underlay - mtu 1400" in dump
    assert f"neigh fd00:2::6 dev vxlan0 lladdr {b6.mac} PERMANENT" in dump
    assert "addr fd00:2::1/64 dev br0" in dump
    assert replan(dp, v) == ()
    # Leaving network A keeps eth1 as it is (no rename, no re-add).
    only_b = view([LOCAL1, REMOTE3, b5, b6], [sandbox("web", (b5, "eth1"))])
    assert replan(dp, only_b) == (DelNetns(name=OV_A),)


def test_drift_is_repaired_by_the_same_plan():
    dp = MemoryDataplane()
    v = base_view()
    reconcile(dp, v)
    ve = veth_name(LOCAL1.id)
    dp.apply(
        (
            DelFdbEntry(netns=OV_A, dev="vxlan0", mac=REMOTE3.mac),  # deleted by hand
            AddNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.4", mac="02:00:00:00:00:99"),  # altered
            AddFdbEntry(netns=OV_A, dev="vxlan0", mac="02:00:00:00:00:77", dst="192.0.2.77"),  # stray
            DelAddress(netns=OV_A, dev="br0", cidr="10.0.1.1/24"),
            AddNeighbour(netns=OV_A, dev="br0", ip="10.0.1.200", mac="02:00:00:00:00:55"),  # stray permanent
            AddBridge(netns=OV_A, name="dummy0"),  # a stray link in our namespace
            SetLinkDown(netns="mn-sb-web", name="eth0"),
            SetLinkMaster(netns=OV_A, name=ve, master=None),
        )
    )
    ops = replan(dp, v)
    assert set(ops) == {
        DelNeighbour(netns=OV_A, dev="br0", ip="10.0.1.200"),
        DelFdbEntry(netns=OV_A, dev="vxlan0", mac="02:00:00:00:00:77"),
        DelLink(netns=OV_A, name="dummy0"),
        AddAddress(netns=OV_A, dev="br0", cidr="10.0.1.1/24"),
        SetLinkMaster(netns=OV_A, name=ve, master="br0"),
        SetLinkUp(netns="mn-sb-web", name="eth0"),
        AddNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.4", mac=REMOTE4.mac),
        AddFdbEntry(netns=OV_A, dev="vxlan0", mac=REMOTE3.mac, dst="192.0.2.2"),
    }
    dp.apply(ops)
    assert replan(dp, v) == ()


def test_a_vxlan_device_set_down_comes_back_with_its_neighbours():
    dp = MemoryDataplane()
    v = base_view()
    reconcile(dp, v)
    dp.apply((SetLinkDown(netns=OV_A, name="vxlan0"),))  # the kernel flushes its neighbours
    assert replan(dp, v) == (
        SetLinkUp(netns=OV_A, name="vxlan0"),
        AddNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.3", mac=REMOTE3.mac),
        AddNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.4", mac=REMOTE4.mac),
    )


def test_a_deleted_veth_or_vxlan_device_is_rebuilt_with_everything_on_it():
    dp = MemoryDataplane()
    v = base_view()
    reconcile(dp, v)
    dp.apply((DelLink(netns=OV_A, name="vxlan0"), DelLink(netns=OV_A, name=veth_name(LOCAL1.id))))
    ops = replan(dp, v)
    assert sum(isinstance(op, AddFdbEntry | AddNeighbour) for op in ops) == 4
    assert any(isinstance(op, AddVeth) for op in ops)
    dp.apply(ops)
    assert replan(dp, v) == ()


def test_an_immutable_vxlan_change_recreates_the_device_and_its_entries():
    dp = MemoryDataplane()
    reconcile(dp, base_view())
    other_port = replace(NET_A, vxlan_port=4800)
    v = view([LOCAL1, REMOTE3, REMOTE4], [sandbox("web", (LOCAL1, "eth0"))], networks=(other_port,))
    ops = replan(dp, v)
    assert ops[0] == AddVxlan(netns=OV_A, name="vxlan0", vni=4097, dstport=4800, mtu=1450)
    assert ops[1:3] == (
        SetLinkMaster(netns=OV_A, name="vxlan0", master="br0"),
        SetLinkUp(netns=OV_A, name="vxlan0"),
    )
    assert sum(isinstance(op, AddFdbEntry | AddNeighbour) for op in ops) == 4
    dp.apply(ops)
    assert replan(dp, v) == ()


def test_adoption_after_restart_changes_nothing_that_is_right():
    old = MemoryDataplane()
    v = base_view()
    reconcile(old, v)
    # A new agent (new reconciler, new dataplane object) finds the kernel as the old one left it.
    adopted = MemoryDataplane(old.snapshot())
    assert replan(adopted, v) == ()
    # While it was down one endpoint left and one came: exactly those entries change, no link is touched.
    newcomer = ep(9, "h3")
    v2 = view([LOCAL1, REMOTE3, newcomer], [sandbox("web", (LOCAL1, "eth0"))])
    assert replan(adopted, v2) == (
        DelFdbEntry(netns=OV_A, dev="vxlan0", mac=REMOTE4.mac),
        DelNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.4"),
        AddNeighbour(netns=OV_A, dev="vxlan0", ip="10.0.1.9", mac=newcomer.mac),
        AddFdbEntry(netns=OV_A, dev="vxlan0", mac=newcomer.mac, dst="192.0.2.3"),
    )


def test_an_extra_primary_address_on_br0_is_removed_and_the_gateway_kept():
    dp = MemoryDataplane()
    v = base_view()
    reconcile(dp, v)
    # By hand: the gateway removed, a stray address added (primary), the gateway added back (secondary).
    dp.apply(
        (
            DelAddress(netns=OV_A, dev="br0", cidr="10.0.1.1/24"),
            AddAddress(netns=OV_A, dev="br0", cidr="10.0.1.250/24"),
            AddAddress(netns=OV_A, dev="br0", cidr="10.0.1.1/24"),
        )
    )
    ops = replan(dp, v)
    assert ops == (
        DelAddress(netns=OV_A, dev="br0", cidr="10.0.1.250/24"),
        AddAddress(netns=OV_A, dev="br0", cidr="10.0.1.1/24"),
    )
    dp.apply(ops)
    assert replan(dp, v) == ()


def test_an_external_sandbox_is_programmed_only_while_its_namespace_exists():
    path = "/proc/4242/ns/net"
    v = view([LOCAL1, REMOTE3], [sandbox("ext", (LOCAL1, "eth0"), path=path)])
    dp = MemoryDataplane()
    d, ops = reconcile(dp, v)
    assert path in d.scope()
    assert not any(isinstance(op, AddVeth) for op in ops)
    assert not any(isinstance(op, AddNetns) and op.name == path for op in ops)
    assert replan(dp, v) == ()
    dp2 = MemoryDataplane(Snapshot({path: NamespaceState.fresh()}))
    _, ops2 = reconcile(dp2, v)
    assert any(isinstance(op, AddVeth) and op.peer_netns == path for op in ops2)
    assert SetLinkUp(netns=path, name="lo") not in ops2  # lo of a foreign namespace is not ours
    assert replan(dp2, v) == ()


def test_partial_scope_leaves_other_networks_alone():
    b5 = ep(5, "h1", NET_B)
    v = view([LOCAL1, REMOTE3, b5], [sandbox("web", (LOCAL1, "eth0"), (b5, "eth1"))])
    dp = MemoryDataplane()
    reconcile(dp, v)
    dp.apply((DelFdbEntry(netns=OV_B, dev="vxlan0", mac="02:00:00:00:00:01"),))
    scope = (OV_A, "mn-sb-web")
    d = desired(v)
    assert plan(d, dp.observe(scope), scope=scope) == ()
    # Drift in B is invisible to a plan scoped to A, and seen by the full one.
    dp.apply((DelAddress(netns=OV_B, dev="br0", cidr="10.0.2.1/24"),))
    assert plan(d, dp.observe(scope), scope=scope) == ()
    assert replan(dp, v) == (AddAddress(netns=OV_B, dev="br0", cidr="10.0.2.1/24"),)


def test_bad_and_conflicting_records_are_dropped_not_raised():
    v6_vtep = replace(ep(10, "h2"), vtep="2001:db8::2")
    multicast_mac = replace(ep(11, "h2"), mac="03:00:00:00:00:01")
    same_ip_as_local = replace(ep(12, "h2"), ipv4="10.9.9.9", mac="02:42:0a:00:01:0c")
    dup_a = ep(13, "h2")
    dup_b = replace(ep(14, "h3"), ipv4=dup_a.ipv4, mac=dup_a.mac)  # same IP and MAC: id order decides
    outside = replace(LOCAL1, ipv4="10.9.9.9")
    clash = replace(NET_B, vni=NET_A.vni, created=5.0)
    b5 = ep(5, "h1", NET_B)
    v = view(
        [outside, v6_vtep, multicast_mac, same_ip_as_local, dup_a, dup_b, b5],
        [sandbox("web", (outside, "eth0"), (b5, "eth1"))],
        networks=(NET_A, clash),
    )
    d = desired(v)
    ov = d.overlays[OV_A]
    assert dict(ov.fdb) == {dup_a.mac: dup_a.vtep}
    assert ov.ports[0].addresses == ()
    assert len(d.dropped) == 6
    assert set(d.overlays) == {OV_A}  # NET_B's VNI clashes with the older NET_A
    dp = MemoryDataplane()
    reconcile(dp, v)
    assert replan(dp, v) == ()


def test_bulk_plan_for_thousands_of_remote_endpoints_is_idempotent():
    remotes = []
    for i in range(2000):
        ip = f"10.0.{16 + i // 250}.{1 + i % 250}"
        remotes.append(
            replace(ep(3, "h2"), id=f"r{i:023d}", ipv4=ip, mac=_mac(ip), vtep=f"192.0.2.{2 + i % 200}")
        )
    big = replace(NET_A, subnets=(replace(NET_A.subnets[0], subnet="10.0.0.0/16", gateway="10.0.0.1"),))
    v = view([LOCAL1, *remotes], [sandbox("web", (LOCAL1, "eth0"))], networks=(big,))
    dp = MemoryDataplane()
    _, ops = reconcile(dp, v)
    assert sum(isinstance(op, AddFdbEntry) for op in ops) == 2000
    assert sum(isinstance(op, AddNeighbour) for op in ops) == 2000
    assert replan(dp, v) == ()


def _mac(ip: str) -> str:
    from meshnet.cnm import mac_from_ip

    return mac_from_ip(ip)
