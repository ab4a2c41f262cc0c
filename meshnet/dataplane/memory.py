"""MemoryDataplane: a validating, all-or-nothing fake of the kernel state meshnet programs.

Theory of operation
-------------------
Modelled on knftables' ``Fake`` (style.md 2.6): ``apply(plan)`` works on a copy of the state, carries out
every op with the kernel's referential checks, and commits only if all of them succeed; a refused op
raises ``DataplaneError`` with the errno the kernel gives for the same mistake and leaves the state as it
was. ``last_plan`` keeps the last plan that committed; ``dump()`` renders everything as canonical text
(``api.render``) for golden comparisons.

It is a model of the kernel, not of an idealised network stack: each rule below was checked on this
project's kernel (6.18) with ``ip``/``bridge`` and is exercised against ``NetlinkDataplane`` by
tests/conformance.

- A new namespace holds ``lo`` (loopback, MTU 65536, down); ``lo`` cannot be deleted (EOPNOTSUPP).
- Ops on a missing namespace fail with ENOENT, on a missing device with ENODEV; deletes of missing
  things (namespace, device or entry) succeed.
- Links start down with MTU 1500 and a MAC (given, or a deterministic locally administered one).
  Deleting a veth end deletes its peer; deleting a bridge frees its ports; deleting a link drops its
  addresses, FDB and neighbour entries. Deleting a namespace deletes its links first, and VXLAN devices
  elsewhere whose underlay it was.
- A bridge's MTU follows its ports (the smallest; 1500 with none) each time a port joins, leaves or
  changes MTU, until its MTU is set explicitly to a different value (``AddBridge(mtu=...)``,
  ``SetLinkMtu``); from then on it stays. Likewise its MAC follows the smallest port MAC (all zeros
  with no ports) unless a MAC was given (``AddBridge(mac=...)``). Give bridges a MAC.
- A link whose MAC changes (set by an op, or a bridge following its ports) loses its neighbour
  entries, as the kernel flushes them on NETDEV_CHANGEADDR; setting the MAC it already has changes
  nothing (``NetlinkDataplane`` does not send it).
- Masters: a master must be a bridge (EOPNOTSUPP otherwise); a bridge or ``lo`` cannot be a port (EINVAL).
- VXLAN: one VNI per (underlay, port, address family): a second device with the same triple is EEXIST,
  whichever namespaces the two live in. FDB entries only on VXLAN devices (EOPNOTSUPP), with a
  destination of the device's address family (EAFNOSUPPORT); a per-entry VNI equal to the device's is
  stored as None, as the kernel reports it.
- A link going down loses its neighbour entries and IPv6 addresses; neighbours on ``lo`` are refused
  (EINVAL). An IPv6 address replaces another with the same address and a different prefix length on the
  same link; IPv4 keys on address and prefix length. Deleting an IPv4 address that is the first (primary)
  of its subnet and prefix length on the link deletes the later ones (secondaries) too; deleting the
  last IPv4 address of a link flushes its IPv4 neighbour entries.

Pure: no kernel, clock or randomness; the generated MACs depend only on the namespace, the link name and
how many links this instance created before.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ..core.errors import DataplaneError
from .api import (
    LOOPBACK,
    UNKNOWN_NETNS,
    Address,
    ApplyResult,
    FdbEntry,
    Link,
    NamespaceState,
    Neighbour,
    Snapshot,
    render,
)
from .ops import (
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
    SetLinkDown,
    SetLinkMaster,
    SetLinkMtu,
    SetLinkUp,
)

__all__ = ["MemoryDataplane", "vxlan_link", "vxlan_matches", "veth_paired"]


def vxlan_link(op: AddVxlan) -> Link:
    """The link ``op`` creates (MAC empty when the op leaves it to the kernel)."""
    return Link(
        name=op.name,
        kind="vxlan",
        mtu=op.mtu if op.mtu is not None else 1500,
        mac=op.mac or "",
        vni=op.vni,
        dstport=op.dstport,
        local=op.local,
        learning=op.learning,
        proxy=op.proxy,
        underlay=op.underlay,
    )


def vxlan_matches(existing: Link | None, op: AddVxlan) -> bool:
    """Whether ``existing`` is a VXLAN device ``op`` may keep (same immutable attributes), so that
    replace only updates MAC and MTU instead of recreating it (ops house rule 4)."""
    if existing is None:
        return False
    blank = {"mtu": 0, "mac": "", "up": False, "master": None}
    return replace(existing, **blank) == replace(vxlan_link(op), **blank)


def veth_paired(link: Link | None, peer: Link | None, op: AddVeth) -> bool:
    """Whether ``link`` and ``peer`` are already the pair ``op`` describes."""
    return (
        link is not None
        and peer is not None
        and link.kind == "veth"
        and (link.peer_netns, link.peer_name) == (op.peer_netns, op.peer_name)
        and (peer.peer_netns, peer.peer_name) == (op.netns, op.name)
    )


class _Refused(Exception):
    """An op broke a kernel rule; ``apply`` turns it into ``DataplaneError`` with the op and index."""

    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_
        self.message = message


@dataclass(slots=True)
class _Ns:
    """One namespace's mutable state inside a transaction (copied before the first change)."""

    links: dict[str, Link]
    pinned_mtu: set[str]  # bridges whose MTU was set explicitly (the kernel's BROPT_MTU_SET_BY_USER)
    pinned_mac: set[str]  # bridges whose MAC was given (the kernel's NET_ADDR_SET)
    addresses: dict[str, dict[str, Address]]  # dev -> cidr -> address
    fdb: dict[str, dict[str, FdbEntry]]  # dev -> mac -> entry
    neighbours: dict[str, dict[str, Neighbour]]  # dev -> ip -> entry

    @classmethod
    def fresh(cls) -> _Ns:
        return cls.load(NamespaceState.fresh())

    @classmethod
    def load(cls, state: NamespaceState) -> _Ns:
        ns = cls({link.name: link for link in state.links}, set(), set(), {}, {}, {})
        for a in state.addresses:
            ns.addresses.setdefault(a.dev, {})[a.cidr] = a
        for e in state.fdb:
            ns.fdb.setdefault(e.dev, {})[e.mac] = e
        for n in state.neighbours:
            ns.neighbours.setdefault(n.dev, {})[n.ip] = n
        return ns

    def copy(self) -> _Ns:
        return _Ns(
            dict(self.links),
            set(self.pinned_mtu),
            set(self.pinned_mac),
            {dev: dict(v) for dev, v in self.addresses.items()},
            {dev: dict(v) for dev, v in self.fdb.items()},
            {dev: dict(v) for dev, v in self.neighbours.items()},
        )

    def state(self) -> NamespaceState:
        return NamespaceState.of(
            links=self.links.values(),
            addresses=(a for per_dev in self.addresses.values() for a in per_dev.values()),
            fdb=(e for per_dev in self.fdb.values() for e in per_dev.values()),
            neighbours=(n for per_dev in self.neighbours.values() for n in per_dev.values()),
        )


def _family(ip: str | None) -> int:
    """4 or 6 for a canonical address (ops canonicalise them), 4 for None."""
    return 6 if ip is not None and ":" in ip else 4


class _Txn:
    """Copy-on-write view of all namespaces for one plan."""

    def __init__(self, base: dict[str, _Ns], mac_counter: int) -> None:
        self.base = base
        self.changed: dict[str, _Ns | None] = {}  # None: deleted in this transaction
        self.mac_counter = mac_counter

    def names(self) -> set[str]:
        names = set(self.base) | {k for k, v in self.changed.items() if v is not None}
        return names - {k for k, v in self.changed.items() if v is None}

    def find(self, netns: str) -> _Ns | None:
        if netns in self.changed:
            return self.changed[netns]
        return self.base.get(netns)

    def peek(self, netns: str) -> _Ns:
        ns = self.find(netns)
        if ns is None:
            raise _Refused(errno.ENOENT, f"network namespace {netns!r} does not exist")
        return ns

    def write(self, netns: str) -> _Ns:
        """The namespace, copied on first write."""
        if netns in self.changed:
            ns = self.changed[netns]
            if ns is None:
                raise _Refused(errno.ENOENT, f"network namespace {netns!r} does not exist")
            return ns
        ns = self.peek(netns).copy()
        self.changed[netns] = ns
        return ns

    def create(self, netns: str) -> None:
        self.changed[netns] = _Ns.fresh()

    def drop(self, netns: str) -> None:
        self.changed[netns] = None

    def commit(self) -> dict[str, _Ns]:
        result = dict(self.base)
        for name, ns in self.changed.items():
            if ns is None:
                result.pop(name, None)
            else:
                result[name] = ns
        return result

    def new_mac(self, netns: str, name: str) -> str:
        self.mac_counter += 1
        digest = hashlib.sha256(f"{netns}\0{name}\0{self.mac_counter}".encode()).digest()
        first = (digest[0] & 0xFC) | 0x02  # locally administered, unicast
        return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))


class MemoryDataplane:
    """The validating in-memory dataplane (module docstring: the rules it enforces).

    ``initial`` seeds the state, e.g. from a ``Snapshot`` observed elsewhere or with a container
    namespace given by path (``Snapshot({"/proc/42/ns/net": NamespaceState.fresh()})``).
    """

    def __init__(self, initial: Snapshot | None = None) -> None:
        self._namespaces: dict[str, _Ns] = {}
        if initial is not None:
            self._namespaces = {name: _Ns.load(st) for name, st in initial.namespaces.items()}
        self._mac_counter = 0
        self.last_plan: Plan | None = None
        self._handlers: dict[type, Callable[[_Txn, Op], None]] = {
            AddNetns: self._add_netns,
            DelNetns: self._del_netns,
            AddBridge: self._add_bridge,
            AddVxlan: self._add_vxlan,
            AddVeth: self._add_veth,
            DelLink: self._del_link,
            SetLinkUp: self._set_up,
            SetLinkDown: self._set_down,
            SetLinkMaster: self._set_master,
            SetLinkMtu: self._set_mtu_op,
            AddAddress: self._add_address,
            DelAddress: self._del_address,
            AddFdbEntry: self._add_fdb,
            DelFdbEntry: self._del_fdb,
            AddNeighbour: self._add_neighbour,
            DelNeighbour: self._del_neighbour,
        }

    # --- the port -------------------------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        """Apply every op of ``plan`` or none: raises ``DataplaneError(op, errno, index=i)`` and keeps
        the previous state when op ``i`` is refused."""
        plan = tuple(plan)
        txn = _Txn(self._namespaces, self._mac_counter)
        for index, op in enumerate(plan):
            handler = self._handlers.get(type(op))
            if handler is None:
                raise DataplaneError(
                    op, errno.EOPNOTSUPP, f"not a dataplane op: {type(op).__name__}", index=index
                )
            try:
                handler(txn, op)
            except _Refused as refused:
                raise DataplaneError(op, refused.errno, refused.message, index=index) from None
        self._namespaces = txn.commit()
        self._mac_counter = txn.mac_counter
        self.last_plan = plan
        return ApplyResult(applied=len(plan))

    def observe(self, scope: Iterable[str]) -> Snapshot:
        """The namespaces of ``scope`` that exist; peers and underlays outside it show as ``?``."""
        wanted = set(scope)
        return Snapshot(
            {name: self._view(ns, wanted) for name, ns in sorted(self._namespaces.items()) if name in wanted}
        )

    # --- inspection -----------------------------------------------------------------------------

    def namespaces(self) -> tuple[str, ...]:
        """Every namespace this fake holds, sorted."""
        return tuple(sorted(self._namespaces))

    def snapshot(self) -> Snapshot:
        """``observe`` of every namespace."""
        return self.observe(self._namespaces)

    def dump(self) -> str:
        """Canonical text of the whole state (``api.render``), for goldens."""
        return render(self.snapshot())

    @staticmethod
    def _view(ns: _Ns, scope: set[str]) -> NamespaceState:
        state = ns.state()
        links = []
        for link in state.links:
            if link.kind == "veth" and link.peer_netns not in scope:
                link = replace(link, peer_netns=UNKNOWN_NETNS, peer_name=None)
            if link.kind == "vxlan" and link.underlay is not None and link.underlay not in scope:
                link = replace(link, underlay=UNKNOWN_NETNS)
            links.append(link)
        return replace(state, links=tuple(links))

    # --- namespaces -----------------------------------------------------------------------------

    def _add_netns(self, txn: _Txn, op: AddNetns) -> None:
        if txn.find(op.name) is None:
            txn.create(op.name)

    def _del_netns(self, txn: _Txn, op: DelNetns) -> None:
        if txn.find(op.name) is None:
            return
        ns = txn.write(op.name)
        for name in sorted(ns.links):
            if name != LOOPBACK and name in ns.links:
                self._delete_link(txn, op.name, name)
        txn.drop(op.name)
        # The kernel deletes VXLAN devices whose socket lived in a dying namespace.
        for other in sorted(txn.names()):
            for link in list(txn.peek(other).links.values()):
                if link.kind == "vxlan" and link.underlay == op.name:
                    self._delete_link(txn, other, link.name)

    # --- links ----------------------------------------------------------------------------------

    @staticmethod
    def _link(ns: _Ns, name: str) -> Link:
        link = ns.links.get(name)
        if link is None:
            raise _Refused(errno.ENODEV, f"device {name!r} does not exist")
        return link

    def _create(self, txn: _Txn, netns: str, link: Link) -> None:
        ns = txn.write(netns)
        if not link.mac:
            link = replace(link, mac=txn.new_mac(netns, link.name))
        ns.links[link.name] = link

    def _delete_link(self, txn: _Txn, netns: str, name: str) -> None:
        ns = txn.write(netns)
        link = ns.links.pop(name, None)
        if link is None:
            return
        ns.pinned_mtu.discard(name)
        ns.pinned_mac.discard(name)
        ns.addresses.pop(name, None)
        ns.fdb.pop(name, None)
        ns.neighbours.pop(name, None)
        if link.kind == "bridge":
            for port in [p for p in ns.links.values() if p.master == name]:
                ns.links[port.name] = replace(port, master=None)
        if link.master is not None:
            self._follow_ports(ns, link.master)
        if link.kind == "veth" and link.peer_netns is not None and link.peer_name is not None:
            peer_ns = txn.find(link.peer_netns)
            if peer_ns is not None and link.peer_name in peer_ns.links:
                self._delete_link(txn, link.peer_netns, link.peer_name)

    @staticmethod
    def _follow_ports(ns: _Ns, bridge: str) -> None:
        """The kernel's bridge MTU auto-adjust and bridge-id recalculation, run when a port joins,
        leaves or changes MTU or MAC."""
        link = ns.links.get(bridge)
        if link is None:
            return
        ports = [p for p in ns.links.values() if p.master == bridge]
        if bridge not in ns.pinned_mtu:
            link = replace(link, mtu=min(p.mtu for p in ports) if ports else 1500)
        if bridge not in ns.pinned_mac:
            mac = min(p.mac for p in ports) if ports else "00:00:00:00:00:00"
            if mac != link.mac:
                link = replace(link, mac=mac)
                ns.neighbours.pop(bridge, None)
        ns.links[bridge] = link

    def _set_mtu(self, ns: _Ns, name: str, mtu: int) -> None:
        """``dev_set_mtu``: no-op when equal; pins a bridge; lets the master follow its ports."""
        link = self._link(ns, name)
        if link.mtu == mtu:
            return
        ns.links[name] = replace(link, mtu=mtu)
        if link.kind == "bridge":
            ns.pinned_mtu.add(name)
        if link.master is not None:
            self._follow_ports(ns, link.master)

    def _set_mac(self, ns: _Ns, name: str, mac: str | None) -> None:
        """``dev_set_mac_address``: a real change flushes the link's neighbours and pins a bridge."""
        link = ns.links[name]
        if mac is None or mac == link.mac:
            return
        ns.links[name] = replace(link, mac=mac)
        ns.neighbours.pop(name, None)
        if link.kind == "bridge":
            ns.pinned_mac.add(name)
        if link.master is not None:
            self._follow_ports(ns, link.master)

    def _add_bridge(self, txn: _Txn, op: AddBridge) -> None:
        ns = txn.write(op.netns)
        existing = ns.links.get(op.name)
        if existing is None or existing.kind != "bridge":
            if existing is not None:
                self._delete_link(txn, op.netns, op.name)
            self._create(txn, op.netns, Link(name=op.name, kind="bridge", mtu=1500, mac=op.mac or ""))
            if op.mac is not None:
                ns.pinned_mac.add(op.name)
        self._set_mac(ns, op.name, op.mac)
        if op.mtu is not None:
            self._set_mtu(ns, op.name, op.mtu)

    def _add_vxlan(self, txn: _Txn, op: AddVxlan) -> None:
        ns = txn.write(op.netns)
        if op.underlay is not None:
            txn.peek(op.underlay)
        existing = ns.links.get(op.name)
        if vxlan_matches(existing, op):
            self._set_mac(ns, op.name, op.mac)
            if op.mtu is not None:
                self._set_mtu(ns, op.name, op.mtu)
            return
        if existing is not None:
            self._delete_link(txn, op.netns, op.name)
        family = _family(op.local)
        for other in sorted(txn.names()):
            for link in txn.peek(other).links.values():
                if (
                    link.kind == "vxlan"
                    and link.underlay == op.underlay
                    and link.vni == op.vni
                    and link.dstport == op.dstport
                    and _family(link.local) == family
                ):
                    raise _Refused(
                        errno.EEXIST,
                        f"a VXLAN device with VNI {op.vni} and port {op.dstport} already exists "
                        f"({other}/{link.name})",
                    )
        self._create(txn, op.netns, vxlan_link(op))

    def _add_veth(self, txn: _Txn, op: AddVeth) -> None:
        ns = txn.write(op.netns)
        peer_ns = txn.write(op.peer_netns)  # the same object as ns when both ends share a namespace
        if not veth_paired(ns.links.get(op.name), peer_ns.links.get(op.peer_name), op):
            self._delete_link(txn, op.netns, op.name)
            self._delete_link(txn, op.peer_netns, op.peer_name)
            self._create(
                txn,
                op.netns,
                Link(
                    name=op.name,
                    kind="veth",
                    mtu=1500,
                    mac=op.mac or "",
                    peer_netns=op.peer_netns,
                    peer_name=op.peer_name,
                ),
            )
            self._create(
                txn,
                op.peer_netns,
                Link(
                    name=op.peer_name,
                    kind="veth",
                    mtu=1500,
                    mac=op.peer_mac or "",
                    peer_netns=op.netns,
                    peer_name=op.name,
                ),
            )
        self._set_mac(ns, op.name, op.mac)
        self._set_mac(peer_ns, op.peer_name, op.peer_mac)
        if op.mtu is not None:
            self._set_mtu(ns, op.name, op.mtu)
            self._set_mtu(peer_ns, op.peer_name, op.mtu)

    def _del_link(self, txn: _Txn, op: DelLink) -> None:
        ns = txn.find(op.netns)
        if ns is None or op.name not in ns.links:
            return
        if op.name == LOOPBACK:
            raise _Refused(errno.EOPNOTSUPP, "the loopback device cannot be deleted")
        self._delete_link(txn, op.netns, op.name)

    def _set_up(self, txn: _Txn, op: SetLinkUp) -> None:
        ns = txn.write(op.netns)
        link = self._link(ns, op.name)
        ns.links[op.name] = replace(link, up=True)

    def _set_down(self, txn: _Txn, op: SetLinkDown) -> None:
        ns = txn.write(op.netns)
        link = self._link(ns, op.name)
        if link.up:
            ns.neighbours.pop(op.name, None)
            per_dev = ns.addresses.get(op.name, {})
            for cidr in [c for c in per_dev if ipaddress.ip_interface(c).version == 6]:
                del per_dev[cidr]
        ns.links[op.name] = replace(link, up=False)

    def _set_master(self, txn: _Txn, op: SetLinkMaster) -> None:
        ns = txn.write(op.netns)
        link = self._link(ns, op.name)
        if op.master is None:
            if link.master is not None:
                ns.links[op.name] = replace(link, master=None)
                self._follow_ports(ns, link.master)
            return
        master = self._link(ns, op.master)
        if master.kind != "bridge":
            raise _Refused(errno.EOPNOTSUPP, f"{op.master!r} is a {master.kind}, not a bridge")
        if link.kind in ("bridge", "loopback"):
            raise _Refused(errno.EINVAL, f"a {link.kind} cannot be a bridge port")
        if link.master == op.master:
            return
        ns.links[op.name] = replace(link, master=op.master)
        if link.master is not None:
            self._follow_ports(ns, link.master)
        self._follow_ports(ns, op.master)

    def _set_mtu_op(self, txn: _Txn, op: SetLinkMtu) -> None:
        self._set_mtu(txn.write(op.netns), op.name, op.mtu)

    # --- addresses and entries ------------------------------------------------------------------

    def _add_address(self, txn: _Txn, op: AddAddress) -> None:
        ns = txn.write(op.netns)
        self._link(ns, op.dev)
        per_dev = ns.addresses.setdefault(op.dev, {})
        iface = ipaddress.ip_interface(op.cidr)
        if iface.version == 6:
            for cidr in [c for c in per_dev if ipaddress.ip_interface(c).ip == iface.ip]:
                del per_dev[cidr]
        per_dev[op.cidr] = Address(op.dev, op.cidr)

    def _del_address(self, txn: _Txn, op: DelAddress) -> None:
        ns = txn.find(op.netns)
        if ns is None or op.cidr not in ns.addresses.get(op.dev, {}):
            return
        ns = txn.write(op.netns)
        per_dev = ns.addresses[op.dev]
        iface = ipaddress.ip_interface(op.cidr)
        gone = [op.cidr]
        if iface.version == 4:
            # IPv4 keeps, per (subnet, prefix length), the first address as primary and the later ones as
            # secondaries; deleting a primary deletes its secondaries (promote_secondaries is off).
            same = [c for c in per_dev if ipaddress.ip_interface(c).network == iface.network]
            if same[0] == op.cidr:
                gone = same
        for cidr in gone:
            del per_dev[cidr]
        if iface.version == 4 and not any(":" not in c for c in per_dev):
            # The last IPv4 address gone: the kernel disables IPv4 on the link and flushes its ARP table.
            arp = ns.neighbours.get(op.dev, {})
            for ip in [ip for ip in arp if ":" not in ip]:
                del arp[ip]

    def _add_fdb(self, txn: _Txn, op: AddFdbEntry) -> None:
        ns = txn.write(op.netns)
        dev = self._link(ns, op.dev)
        if dev.kind != "vxlan":
            raise _Refused(errno.EOPNOTSUPP, f"FDB entries go on VXLAN devices; {op.dev!r} is a {dev.kind}")
        if _family(op.dst) != _family(dev.local):
            raise _Refused(errno.EAFNOSUPPORT, f"destination {op.dst} is not of {op.dev!r}'s address family")
        vni = None if op.vni == dev.vni else op.vni
        ns.fdb.setdefault(op.dev, {})[op.mac] = FdbEntry(op.dev, op.mac, op.dst, vni, op.permanent)

    def _del_fdb(self, txn: _Txn, op: DelFdbEntry) -> None:
        ns = txn.find(op.netns)
        if ns is None or op.mac not in ns.fdb.get(op.dev, {}):
            return
        del txn.write(op.netns).fdb[op.dev][op.mac]

    def _add_neighbour(self, txn: _Txn, op: AddNeighbour) -> None:
        ns = txn.write(op.netns)
        dev = self._link(ns, op.dev)
        if dev.kind == "loopback":
            raise _Refused(errno.EINVAL, "no neighbour entries on the loopback device")
        ns.neighbours.setdefault(op.dev, {})[op.ip] = Neighbour(op.dev, op.ip, op.mac, True)

    def _del_neighbour(self, txn: _Txn, op: DelNeighbour) -> None:
        ns = txn.find(op.netns)
        if ns is None or op.ip not in ns.neighbours.get(op.dev, {}):
            return
        del txn.write(op.netns).neighbours[op.dev][op.ip]
