"""``plan(desired, snapshot)``: the ops that turn the observed overlay into the desired one.

Theory of operation. Level-triggered: the plan depends only on the desired state and what was observed,
never on history, so the same code creates an overlay, repairs drift (an entry deleted or altered by
hand, a link set down, a veth deleted) and adopts the kernel state a previous agent left (restart): what
is already right produces no op at all, so a working link is never deleted and re-added. Applying the
plan and planning again against the new observation gives an empty plan.

What the plan may touch (nothing else): namespaces named by the prefix (``{prefix}ov-N``,
``{prefix}sb-NAME``): created, and deleted when stale; inside an overlay namespace everything (it is
meshnet's): unknown links are deleted, ``br0`` keeps exactly the gateway addresses, ``vxlan0`` exactly
the remote endpoints' FDB and neighbour entries, and permanent neighbours elsewhere in it are removed;
inside a sandbox namespace only the interfaces of joined endpoints (stale ones go with their ``ve-`` end)
and, for sandboxes meshnet created, ``lo`` up.

Order: deletions first (stale namespaces, then per overlay: entries, unknown links, extra addresses), so
names and VNIs are free before anything is created; then the sandboxes meshnet creates; then per overlay
namespace, bridge, gateways, VXLAN device, ports and last the entries (after ``vxlan0`` is up: a link
going down loses its neighbours). An object that has to be recreated (another kind; a VXLAN device whose
VNI, port, local, learning, proxy or underlay differ; a veth paired elsewhere) takes its dependants along
(ops house rule 4), so those are planned anew rather than compared.

``scope`` restricts the plan to some namespaces (a partial reconcile after one join): pass the same
names that were observed. A port is planned only when both its overlay and its sandbox namespace are in
scope (otherwise its veth's peer is not visible); a sandbox given by path that does not exist (the
container is gone) is skipped until it appears or its sandbox is removed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshnet.dataplane.api import LOOPBACK, Link, NamespaceState, Snapshot
from meshnet.dataplane.memory import veth_paired, vxlan_matches
from meshnet.dataplane.ops import (
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
    Op,
    Plan,
    SetLinkMaster,
    SetLinkUp,
)

from .desired import DesiredOverlay, DesiredState
from .view import BRIDGE, VXLAN, is_managed_netns

__all__ = ["plan"]

_EMPTY = NamespaceState()


def plan(desired: DesiredState, snapshot: Snapshot, *, scope: Iterable[str] | None = None) -> Plan:
    """The ops that make ``snapshot`` (an ``observe`` of ``desired.scope(...)``, or of ``scope``) what
    ``desired`` says, for the namespaces in ``scope`` (default: ``desired.scope`` of what the snapshot
    holds). Empty when nothing differs (module docstring for the rules)."""
    names = set(desired.scope(snapshot.namespaces)) if scope is None else set(scope)
    deletes: list[Op] = []
    adds: list[Op] = []

    wanted = set(desired.overlays) | set(desired.managed_sandboxes)
    for ns in sorted(names):
        if ns in snapshot and ns not in wanted and is_managed_netns(desired.prefix, ns):
            deletes.append(DelNetns(name=ns))

    for ns in sorted(desired.managed_sandboxes & names):
        state = snapshot.get(ns)
        if state is None:
            adds.append(AddNetns(name=ns))
            adds.append(SetLinkUp(netns=ns, name=LOOPBACK))
        else:
            lo = state.link(LOOPBACK)
            if lo is None or not lo.up:
                adds.append(SetLinkUp(netns=ns, name=LOOPBACK))

    for ns in sorted(desired.overlays):
        if ns in names:
            _plan_overlay(desired.overlays[ns], desired, snapshot, names, deletes, adds)
    return tuple(deletes) + tuple(adds)


def _addresses(state: NamespaceState, dev: str) -> set[str]:
    return {a.cidr for a in state.addresses if a.dev == dev}


def _sync_addresses(
    netns: str, dev: str, want: tuple[str, ...], have: set[str], deletes: list[Op], adds: list[Op]
) -> None:
    """Exact addresses on ``dev``. Deleting an IPv4 primary deletes its secondaries (promote_secondaries
    is off), so a wanted IPv4 address of the same subnet as a deleted one is added again after it."""
    extra = sorted(have.difference(want))
    missing = [c for c in want if c not in have]
    if extra:
        hit = {ipaddress.ip_interface(c).network for c in extra if ":" not in c}
        for c in want:
            if c in have and ":" not in c and ipaddress.ip_interface(c).network in hit:
                missing.append(c)
        deletes.extend(DelAddress(netns=netns, dev=dev, cidr=c) for c in extra)
    adds.extend(AddAddress(netns=netns, dev=dev, cidr=c) for c in missing)


def _plan_overlay(
    ov: DesiredOverlay,
    desired: DesiredState,
    snapshot: Snapshot,
    names: set[str],
    deletes: list[Op],
    adds: list[Op],
) -> None:
    ns = ov.netns
    observed = snapshot.get(ns)
    state = observed if observed is not None else _EMPTY
    if observed is None:
        adds.append(AddNetns(name=ns))
    links: dict[str, Link] = {link.name: link for link in state.links}
    port_names = {p.name for p in ov.ports}

    # Unknown links go first (their entries and veth peers with them).
    for name in sorted(links):
        if name not in (LOOPBACK, BRIDGE, VXLAN) and name not in port_names:
            deletes.append(DelLink(netns=ns, name=name))

    # Bridge with the gateways.
    br = links.get(BRIDGE)
    br_fresh = br is None or br.kind != "bridge"
    if br_fresh or br.mac != ov.bridge_mac or br.mtu != ov.mtu:
        adds.append(AddBridge(netns=ns, name=BRIDGE, mtu=ov.mtu, mac=ov.bridge_mac))
    _sync_addresses(ns, BRIDGE, ov.gateways, set() if br_fresh else _addresses(state, BRIDGE), deletes, adds)
    if br_fresh or not br.up:
        adds.append(SetLinkUp(netns=ns, name=BRIDGE))

    # VXLAN device: created in the agent's namespace (underlay None) and living in the overlay namespace.
    vx = links.get(VXLAN)
    want_vx = AddVxlan(
        netns=ns,
        name=VXLAN,
        vni=ov.vni,
        dstport=ov.dstport,
        local=ov.local,
        learning=False,
        proxy=True,
        mtu=ov.mtu,
    )
    vx_fresh = not vxlan_matches(vx, want_vx)
    if vx_fresh or vx.mtu != ov.mtu:
        adds.append(want_vx)
    if vx_fresh or br_fresh or vx.master != BRIDGE:
        adds.append(SetLinkMaster(netns=ns, name=VXLAN, master=BRIDGE))
    if vx_fresh or not vx.up:
        adds.append(SetLinkUp(netns=ns, name=VXLAN))

    # Ports: veth ve-* on br0, peer ethN in the sandbox.
    for port in ov.ports:
        if port.sandbox_netns not in names:
            continue
        sb_state = snapshot.get(port.sandbox_netns)
        if sb_state is None and port.external:
            continue  # the container's namespace is gone (or not there yet): nothing to program
        sb_state = sb_state if sb_state is not None else _EMPTY
        ve = links.get(port.name)
        peer = sb_state.link(port.ifname)
        want_veth = AddVeth(
            netns=ns,
            name=port.name,
            peer_netns=port.sandbox_netns,
            peer_name=port.ifname,
            mtu=ov.mtu,
            peer_mac=port.mac,
        )
        paired = veth_paired(ve, peer, want_veth)
        if not paired or ve.mtu != ov.mtu or peer.mtu != ov.mtu or peer.mac != port.mac:
            adds.append(want_veth)
        if not paired or br_fresh or ve.master != BRIDGE:
            adds.append(SetLinkMaster(netns=ns, name=port.name, master=BRIDGE))
        if not paired or not ve.up:
            adds.append(SetLinkUp(netns=ns, name=port.name))
        have = _addresses(sb_state, port.ifname) if paired else set()
        _sync_addresses(port.sandbox_netns, port.ifname, port.addresses, have, deletes, adds)
        if not paired or not peer.up:
            adds.append(SetLinkUp(netns=port.sandbox_netns, name=port.ifname))

    # Entries of the remote endpoints on vxlan0 (exactly those), after vxlan0 is up.
    _plan_entries(ov, state, vx_fresh, deletes, adds)


def _plan_entries(
    ov: DesiredOverlay, state: NamespaceState, vx_fresh: bool, deletes: list[Op], adds: list[Op]
) -> None:
    ns = ov.netns
    want_fdb = ov.fdb
    want_neigh = ov.neighbours
    if vx_fresh:
        have_fdb: dict[str, tuple[str, bool]] = {}
        have_neigh: dict[str, tuple[str, bool]] = {}
    else:
        have_fdb = {e.mac: (e.dst, e.vni is None and e.permanent) for e in state.fdb if e.dev == VXLAN}
        have_neigh = {n.ip: (n.mac, n.permanent) for n in state.neighbours if n.dev == VXLAN}
    for n in state.neighbours:
        if n.dev != VXLAN and n.permanent:
            deletes.append(DelNeighbour(netns=ns, dev=n.dev, ip=n.ip))
    for mac in have_fdb:
        if mac not in want_fdb:
            deletes.append(DelFdbEntry(netns=ns, dev=VXLAN, mac=mac))
    for ip in have_neigh:
        if ip not in want_neigh:
            deletes.append(DelNeighbour(netns=ns, dev=VXLAN, ip=ip))
    for ip, mac in want_neigh.items():
        if have_neigh.get(ip) != (mac, True):
            adds.append(AddNeighbour(netns=ns, dev=VXLAN, ip=ip, mac=mac))
    for mac, dst in want_fdb.items():
        if have_fdb.get(mac) != (dst, True):
            adds.append(AddFdbEntry(netns=ns, dev=VXLAN, mac=mac, dst=dst))
