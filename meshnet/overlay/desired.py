"""``desired(view)``: the overlay a host should have, as plain values (no ops yet).

Rules (docs/agent-services.md section 3; libnetwork.md 3.2-3.4):

- A network gets an overlay namespace on this host while at least one of its local endpoints is joined to
  a local sandbox; with it: ``br0`` (pinned MTU and a MAC derived from the network id, the gateways
  ``GW/prefix`` of every subnet as addresses, up), ``vxlan0`` (VNI, ``nolearning``, proxy, the network's
  VXLAN port, ``local`` the host's ``vxlan_local`` (None: routing picks the source), created in the
  agent's namespace: ``underlay`` None; port of ``br0``, up) and one veth per
  joined local endpoint: ``ve-{id[:8]}`` on ``br0``, up, its peer the sandbox's ``ethN`` with the
  endpoint's MAC and ``address/prefix`` of its subnet, up. Every link has the overlay MTU: the network's
  ``mtu`` or ``underlay_mtu - 50``.
- For every *remote* endpoint of such a network (``record.host != view.host``), joined or not: a
  permanent neighbour entry IP -> MAC for each of its addresses and a permanent FDB entry MAC -> its
  host's VTEP, both on ``vxlan0``. libnetwork adds its peer record only at Join; meshnet's record exists
  from endpoint creation (address allocated), which is earlier in ``attach`` than the plug on the
  endpoint's host, so peers are programmed while that host plugs and a container's first ARP is
  answered instead of waiting out a retransmission (bench/overlay_propagation.py). Frames to an endpoint
  not plugged yet end at its host's bridge, as they would for any absent MAC.
- Sandboxes meshnet created exist (``lo`` up) whether or not anything is joined.

Bad or conflicting records are remote input: they are dropped and listed in ``DesiredState.dropped``,
never raised. Conflicts resolve the same way on every host: a network whose VNI another network with a
smaller ``(created, id)`` uses is dropped (both would want the same namespace); local endpoints claim
their IPs and MACs first, then remote endpoints in endpoint-id order; an endpoint whose IP or MAC is
already claimed is dropped whole.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.cnm.records import EndpointRecord, NetworkRecord

from .view import VXLAN_OVERHEAD, HostView, is_managed_netns, overlay_netns, veth_name

__all__ = ["DesiredPort", "DesiredOverlay", "DesiredState", "desired", "bridge_mac"]


@dataclass(frozen=True, slots=True)
class DesiredPort:
    """A joined local endpoint: veth ``name`` on ``br0`` and its peer ``ifname`` in ``sandbox_netns``."""

    endpoint: str
    name: str
    sandbox_netns: str
    ifname: str
    mac: str
    #: ``address/prefix`` on the sandbox side, IPv4 first.
    addresses: tuple[str, ...]
    #: The sandbox namespace was handed in by path: the plan never creates it and skips the port while
    #: the namespace is missing.
    external: bool = False


@dataclass(frozen=True, slots=True)
class DesiredOverlay:
    """One network's overlay namespace on this host."""

    network: str
    netns: str
    vni: int
    dstport: int
    mtu: int
    bridge_mac: str
    #: ``gateway/prefix`` of every subnet, the addresses of ``br0``.
    gateways: tuple[str, ...]
    ports: tuple[DesiredPort, ...]
    #: Remote endpoints: MAC -> VTEP (FDB on ``vxlan0``).
    fdb: Mapping[str, str]
    #: Remote endpoints: IP -> MAC (neighbours on ``vxlan0``).
    neighbours: Mapping[str, str]
    #: ``vxlan0``'s source address (``HostView.vxlan_local``); None: routing picks it.
    local: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredState:
    """The whole desired overlay of a host (``desired(view)``)."""

    prefix: str
    #: By overlay namespace name.
    overlays: Mapping[str, DesiredOverlay] = field(default_factory=dict)
    #: Namespaces of the sandboxes meshnet created (they exist with ``lo`` up).
    managed_sandboxes: frozenset[str] = frozenset()
    #: Records dropped as bad or conflicting remote input, one line each (for logs and stats).
    dropped: tuple[str, ...] = ()

    def namespaces(self) -> tuple[str, ...]:
        """Every namespace the desired state names (overlays, managed and external sandboxes), sorted."""
        names = set(self.overlays) | set(self.managed_sandboxes)
        for ov in self.overlays.values():
            names.update(p.sandbox_netns for p in ov.ports)
        return tuple(sorted(names))

    def scope(self, existing: Iterable[str] = ()) -> tuple[str, ...]:
        """What to ``observe`` before ``plan``: ``namespaces()`` plus those of ``existing`` (e.g. the
        names under ``/run/netns``) that meshnet with this prefix manages, so stale ones are deleted."""
        names = set(self.namespaces())
        names.update(ns for ns in existing if is_managed_netns(self.prefix, ns))
        return tuple(sorted(names))

    def overlay_of(self, network_id: str) -> DesiredOverlay | None:
        """The overlay of network ``network_id``, or None when this host has none."""
        for ov in self.overlays.values():
            if ov.network == network_id:
                return ov
        return None


def bridge_mac(network_id: str) -> str:
    """``br0``'s MAC: ``06:`` + 5 bytes of SHA-256 of the network id (locally administered, unicast, never
    an endpoint's ``02:42:...``), the same on every host so adoption and repair keep it stable."""
    digest = hashlib.sha256(b"meshnet-br0\0" + network_id.encode()).digest()
    return "06:" + ":".join(f"{b:02x}" for b in digest[:5])


def _unicast_mac(mac: str) -> bool:
    return len(mac) == 17 and not int(mac[:2], 16) & 1 and mac != "00:00:00:00:00:00"


def _is_ipv4(text: str) -> bool:
    return ":" not in text


def _is_multicast(ip: str) -> bool:
    if ":" in ip:
        return ip.lower().startswith("ff")
    return 224 <= int(ip.split(".", 1)[0]) <= 239


def desired(view: HostView) -> DesiredState:
    """The desired overlay of ``view`` (module docstring for the rules). Pure and deterministic."""
    prefix = view.netns_prefix
    dropped: list[str] = []

    local_ifaces: dict[str, tuple[str, str, bool]] = {}  # endpoint id -> (sandbox netns, ifname, external)
    managed: set[str] = set()
    for sb in sorted(view.sandboxes, key=lambda s: s.id):
        if sb.managed:
            managed.add(sb.netns)
        for ep_id, ifname in sb.interfaces:
            if ep_id in local_ifaces:
                dropped.append(f"endpoint {ep_id} is joined to two sandboxes; kept the first")
                continue
            local_ifaces[ep_id] = (sb.netns, ifname, not sb.managed)

    by_network: dict[str, list[EndpointRecord]] = {}
    for ep in view.endpoints:
        by_network.setdefault(ep.network, []).append(ep)

    overlays: dict[str, DesiredOverlay] = {}
    for net in sorted(view.networks, key=lambda n: (n.created, n.id)):
        eps = by_network.get(net.id, ())
        ports = _ports(net, eps, view, local_ifaces, dropped)
        if not ports:
            continue
        netns = overlay_netns(prefix, net.vni)
        if netns in overlays:
            dropped.append(
                f"network {net.id} ({net.name}): VNI {net.vni} is already used by network "
                f"{overlays[netns].network}; no overlay for it"
            )
            continue
        mtu = net.mtu or (view.underlay_mtu - VXLAN_OVERHEAD)
        if not 68 <= mtu <= 65535:
            dropped.append(f"network {net.id} ({net.name}): overlay MTU {mtu} out of range; no overlay")
            continue
        fdb, neighbours = _remote_entries(eps, view, ports, dropped)
        gateways = []
        for s in net.subnets:
            plen = ipaddress.ip_network(s.subnet).prefixlen
            gateways.append(f"{s.gateway}/{plen}")
        overlays[netns] = DesiredOverlay(
            network=net.id,
            netns=netns,
            vni=net.vni,
            dstport=net.vxlan_port,
            mtu=mtu,
            bridge_mac=bridge_mac(net.id),
            gateways=tuple(gateways),
            ports=tuple(ports),
            fdb=fdb,
            neighbours=neighbours,
            local=view.vxlan_local,
        )
    return DesiredState(
        prefix=prefix,
        overlays=overlays,
        managed_sandboxes=frozenset(managed),
        dropped=tuple(dropped),
    )


def _ports(
    net: NetworkRecord,
    eps: Iterable[EndpointRecord],
    view: HostView,
    local_ifaces: dict[str, tuple[str, str, bool]],
    dropped: list[str],
) -> list[DesiredPort]:
    subnets = [ipaddress.ip_network(s.subnet) for s in net.subnets]
    ports: list[DesiredPort] = []
    names: set[str] = set()
    for ep in sorted(eps, key=lambda e: e.id):
        if ep.host != view.host or ep.id not in local_ifaces:
            continue
        sb_netns, ifname, external = local_ifaces[ep.id]
        addresses = []
        for ip in ep.addresses():
            addr = ipaddress.ip_address(ip)
            net_of = next((n for n in subnets if addr in n), None)
            if net_of is None:
                dropped.append(f"endpoint {ep.id}: address {ip} is in no subnet of network {net.id}")
                continue
            addresses.append(f"{ip}/{net_of.prefixlen}")
        name = veth_name(ep.id)
        if name in names:
            dropped.append(f"endpoint {ep.id}: veth name {name} clashes with another local endpoint")
            continue
        if not _unicast_mac(ep.mac):
            dropped.append(f"endpoint {ep.id}: MAC {ep.mac} is not a unicast MAC")
            continue
        names.add(name)
        ports.append(DesiredPort(ep.id, name, sb_netns, ifname, ep.mac, tuple(addresses), external))
    return ports


def _remote_entries(
    eps: Iterable[EndpointRecord],
    view: HostView,
    ports: list[DesiredPort],
    dropped: list[str],
) -> tuple[dict[str, str], dict[str, str]]:
    claimed_ips: set[str] = {a.split("/", 1)[0] for p in ports for a in p.addresses}
    claimed_macs: set[str] = {p.mac for p in ports}
    # Local endpoints that are not joined hold their addresses too.
    for ep in eps:
        if ep.host == view.host:
            claimed_ips.update(ep.addresses())
            claimed_macs.add(ep.mac)
    fdb: dict[str, str] = {}
    neighbours: dict[str, str] = {}
    for ep in sorted((e for e in eps if e.host != view.host), key=lambda e: e.id):
        if view.vtep is not None and ep.vtep == view.vtep:
            dropped.append(f"endpoint {ep.id}: host {ep.host} claims this host's VTEP {ep.vtep}")
            continue
        if not _is_ipv4(ep.vtep):
            dropped.append(f"endpoint {ep.id}: IPv6 VTEP {ep.vtep} (the overlay's VXLAN is IPv4)")
            continue
        if not _unicast_mac(ep.mac):
            dropped.append(f"endpoint {ep.id}: MAC {ep.mac} is not a unicast MAC")
            continue
        ips = ep.addresses()
        if any(_is_multicast(ip) for ip in ips):
            dropped.append(f"endpoint {ep.id}: a multicast address is not an endpoint address")
            continue
        if ep.mac in claimed_macs or any(ip in claimed_ips for ip in ips):
            dropped.append(f"endpoint {ep.id}: its MAC or address is already used by another endpoint")
            continue
        claimed_macs.add(ep.mac)
        claimed_ips.update(ips)
        fdb[ep.mac] = ep.vtep
        for ip in ips:
            neighbours[ip] = ep.mac
    return fdb, neighbours
