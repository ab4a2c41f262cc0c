"""Hand-written views for the overlay reconciler tests."""

from __future__ import annotations

from meshnet.cnm import EndpointRecord, NetworkRecord, SubnetRecord, mac_from_ip
from meshnet.dataplane import MemoryDataplane
from meshnet.dataplane.ops import Plan
from meshnet.overlay import DesiredState, HostView, LocalSandbox, desired, plan

NET_A = NetworkRecord(
    id="aaaaaaaaaaaaaaaaaaaaaaaa",
    name="front",
    vni=4097,
    subnets=(SubnetRecord("10.0.1.0/24", "10.0.1.1"),),
    created=1.0,
)
NET_B = NetworkRecord(
    id="bbbbbbbbbbbbbbbbbbbbbbbb",
    name="back",
    vni=4098,
    subnets=(SubnetRecord("10.0.2.0/24", "10.0.2.1"), SubnetRecord("fd00:2::/64", "fd00:2::1")),
    mtu=1400,
    vxlan_port=4790,
    created=2.0,
)
VTEPS = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}


def ep(
    n: int, host: str, net: NetworkRecord = NET_A, *, sandbox: str = "sb", ipv6: str | None = None
) -> EndpointRecord:
    """Endpoint ``n`` of ``net`` on ``host`` with address ``.n`` in the network's first subnet."""
    base = net.subnets[0].subnet.rsplit(".", 1)[0]
    ip = f"{base}.{n}"
    return EndpointRecord(
        id=f"{n:02d}{net.id[0]}" + "e" * 21,
        name=f"c{n}",
        network=net.id,
        host=host,
        vtep=VTEPS[host],
        mac=mac_from_ip(ip),
        ipv4=ip,
        ipv6=ipv6,
        sandbox=sandbox,
    )


def sandbox(name: str, *joined: tuple[EndpointRecord, str], path: str | None = None) -> LocalSandbox:
    return LocalSandbox(
        id=f"sb-{name}",
        netns=path if path is not None else f"mn-sb-{name}",
        managed=path is None,
        interfaces=tuple((e.id, ifname) for e, ifname in joined),
    )


def view(endpoints, sandboxes, networks=(NET_A, NET_B), host: str = "h1") -> HostView:
    return HostView.of(
        host=host,
        netns_prefix="mn-",
        underlay_mtu=1500,
        vtep=VTEPS[host],
        networks=networks,
        endpoints=endpoints,
        sandboxes=sandboxes,
    )


def reconcile(dp: MemoryDataplane, v: HostView) -> tuple[DesiredState, Plan]:
    """One full pass (scope includes every namespace the fake holds); returns the desired state and plan."""
    d = desired(v)
    ops = plan(d, dp.observe(d.scope(dp.namespaces())))
    dp.apply(ops)
    return d, ops


def replan(dp: MemoryDataplane, v: HostView) -> Plan:
    d = desired(v)
    return plan(d, dp.observe(d.scope(dp.namespaces())))
