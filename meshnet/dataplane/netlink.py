"""NetlinkDataplane: the ``Dataplane`` port on the real kernel, through netlink (pyroute2 + hand packing).

Theory of operation
-------------------
Every call opens what it needs and closes it before returning: one netlink socket per namespace it
touches, made inside that namespace by a helper thread (``nlwire.NlSocket.open``), so calls are safe
from any thread (the runtime uses ``trio.to_thread``) and nothing leaks between calls. Two calls that
change the same namespaces at once are the caller's mistake (the runtime's reconcile loop is single).

``observe(scope)`` dumps links and addresses with pyroute2's decoders and the FDB and neighbour tables
with a hand parser (tens of thousands of entries), then turns kernel ids into names: interface indexes
into link names, and the namespace ids in ``IFLA_LINK_NETNSID`` (a veth's peer, a VXLAN device's socket
namespace) into namespace names by asking each namespace which id it gives the others (RTM_GETNSID).
What a snapshot leaves out (kernel-made addresses, neighbours and fallback tunnel devices) is listed in
``api``.

``apply(plan)`` keeps the guarantee written in ``api``:

1. *Validate first.* Observe links and addresses of every namespace the plan names and replay the plan
   on a ``MemoryDataplane`` loaded with them. A refusal there is raised unchanged and the kernel is not
   touched.
2. *Apply in order.* Link, address and namespace ops go one request at a time, each acknowledged.
   A run of consecutive FDB/neighbour ops on one namespace goes as one bulk batch (``NlSocket.bulk``):
   hand-packed requests, many to a ``send()``, each with its own ack, so each op gets its own verdict
   at a fraction of a round trip each. Replace semantics come from ``NLM_F_CREATE|NLM_F_REPLACE``;
   ``ENOENT`` on a delete counts as success.
3. *On refusal, report and stop.* The first refused op raises ``DataplaneError(op, errno, index=i)``.
   The caller re-observes and re-plans; every op is idempotent, so that converges.

Safety: every op targets a namespace the plan names. The only request sent in the namespace this
object was created in (``own namespace``) is the creation of a VXLAN device with ``underlay`` None:
the device is created directly inside its target namespace (``IFLA_NET_NS_FD``), so only its UDP
socket lives in the own namespace, as libnetwork's does in the host's.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..core.errors import DataplaneError
from . import nlwire
from .api import (
    UNKNOWN_NETNS,
    Address,
    ApplyResult,
    FdbEntry,
    Link,
    NamespaceState,
    Neighbour,
    Snapshot,
    plan_namespaces,
)
from .memory import MemoryDataplane, veth_paired, vxlan_matches
from .nlwire import NlError, NlSocket
from .ops import (
    ALL_OPS,
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
    EntryOp,
    Plan,
    SetLinkDown,
    SetLinkMaster,
    SetLinkMtu,
    SetLinkUp,
    valid_netns,
)

__all__ = ["NetlinkDataplane"]

IFF_UP, IFF_LOOPBACK = 0x1, 0x8
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
_ENTRY_OPS = (AddFdbEntry, DelFdbEntry, AddNeighbour, DelNeighbour)
_CREATE = nlwire.NLM_F_CREATE | nlwire.NLM_F_EXCL
_REPLACE = nlwire.NLM_F_CREATE | nlwire.NLM_F_REPLACE
#: Devices some kernels put in every new namespace by themselves (when the tunnel modules are loaded).
_FALLBACK_DEVICES = {
    "tunl0": "ipip",
    "sit0": "sit",
    "ip6tnl0": "ip6tnl",
    "gre0": "gre",
    "gretap0": "gretap",
    "erspan0": "erspan",
    "ip6gre0": "ip6gre",
    "ip_vti0": "vti",
    "ip6_vti0": "vti6",
}
_OWN = object()  # marks the own namespace among nsid candidates


@dataclass(slots=True)
class _RawLink:
    index: int
    link: Link  # with kernel ids still unresolved: master/peer/underlay filled in by _Session.links
    master_index: int
    peer_index: int
    netnsid: int | None


def _decode_link(msg) -> _RawLink | None:  # type: ignore[no-untyped-def]
    name = msg.get_attr("IFLA_IFNAME")
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if msg["flags"] & IFF_LOOPBACK:
        kind = "loopback"
    if _FALLBACK_DEVICES.get(name) == kind:
        return None
    fields: dict[str, object] = {}
    if kind == "vxlan":
        data = info.get_attr("IFLA_INFO_DATA")
        local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
        fields = {
            "vni": data.get_attr("IFLA_VXLAN_ID"),
            "dstport": data.get_attr("IFLA_VXLAN_PORT"),
            "local": str(ipaddress.ip_address(local)) if local else None,
            "learning": bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            "proxy": bool(data.get_attr("IFLA_VXLAN_PROXY")),
        }
    link = Link(
        name=name,
        kind=kind or "device",
        mtu=msg.get_attr("IFLA_MTU"),
        mac=(msg.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00").lower(),
        up=bool(msg["flags"] & IFF_UP),
        **fields,
    )
    return _RawLink(
        msg["index"],
        link,
        msg.get_attr("IFLA_MASTER") or 0,
        msg.get_attr("IFLA_LINK") or 0,
        msg.get_attr("IFLA_LINK_NETNSID"),
    )


def _is_multicast(ip: str) -> bool:
    if ":" in ip:
        return ip[:2].lower() == "ff"
    return 224 <= int(ip.split(".", 1)[0]) <= 239


@dataclass
class _Session:
    """The sockets, fds and link tables of one ``observe``/``apply`` call; ``close()`` frees them."""

    own_fd: int
    scope: tuple[str, ...] = ()
    fds: dict[str, int | None] = field(default_factory=dict)
    socks: dict[object, NlSocket] = field(default_factory=dict)
    raw: dict[str, dict[int, _RawLink]] = field(default_factory=dict)
    nsids: dict[str, dict[int, object]] = field(default_factory=dict)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)
        self.socks.clear()
        self.fds.clear()

    def fd(self, netns: str) -> int | None:
        if netns not in self.fds:
            self.fds[netns] = nlwire.open_netns(netns)
        return self.fds[netns]

    def forget(self, netns: str) -> None:
        """Drop what is cached about ``netns`` (after it was created or removed)."""
        sock = self.socks.pop(netns, None)
        if sock is not None:
            sock.close()
        fd = self.fds.pop(netns, None)
        if fd is not None:
            os.close(fd)
        self.changed(netns)

    def changed(self, netns: str) -> None:
        self.raw.pop(netns, None)
        self.nsids.pop(netns, None)

    def sock(self, netns: str) -> NlSocket:
        sock = self.socks.get(netns)
        if sock is None:
            fd = self.fd(netns)
            if fd is None:
                raise NlError(errno.ENOENT, f"network namespace {netns!r} does not exist")
            sock = self.socks[netns] = NlSocket.open(fd)
        return sock

    def own_sock(self) -> NlSocket:
        sock = self.socks.get(_OWN)
        if sock is None:
            sock = self.socks[_OWN] = NlSocket.open(self.own_fd)
        return sock

    def raw_links(self, netns: str) -> dict[int, _RawLink]:
        if netns not in self.raw:
            decoded = (_decode_link(msg) for msg in self.sock(netns).dump_links())
            self.raw[netns] = {r.index: r for r in decoded if r is not None}
        return self.raw[netns]

    def _namespace_of(self, netns: str, nsid: int) -> object:
        """The namespace (name, or ``_OWN``) that ``netns`` calls ``nsid``; UNKNOWN_NETNS if none in scope."""
        known = self.nsids.get(netns)
        if known is None:
            known = self.nsids[netns] = {}
            sock = self.sock(netns)
            for candidate in (_OWN, *self.scope):
                fd = self.own_fd if candidate is _OWN else self.fd(candidate)  # type: ignore[arg-type]
                if candidate == netns or fd is None:
                    continue
                got = sock.nsid_of(fd)
                if got is not None and got not in known:
                    known[got] = candidate
        return known.get(nsid, UNKNOWN_NETNS)

    def links(self, netns: str) -> dict[str, tuple[int, Link]]:
        """Name -> (index, link) with master, veth peer and VXLAN underlay resolved."""
        raw = self.raw_links(netns)
        out: dict[str, tuple[int, Link]] = {}
        for r in raw.values():
            link = r.link
            master = raw.get(r.master_index)
            if master is not None:
                link = replace(link, master=master.link.name)
            if link.kind == "vxlan":
                underlay = netns if r.netnsid is None else self._namespace_of(netns, r.netnsid)
                link = replace(link, underlay=None if underlay is _OWN else underlay)
            elif link.kind == "veth":
                peer_ns = netns if r.netnsid is None else self._namespace_of(netns, r.netnsid)
                peer = None
                if isinstance(peer_ns, str) and peer_ns != UNKNOWN_NETNS and self.fd(peer_ns) is not None:
                    peer = self.raw_links(peer_ns).get(r.peer_index)
                if peer is None:
                    link = replace(link, peer_netns=UNKNOWN_NETNS, peer_name=None)
                else:
                    link = replace(link, peer_netns=peer_ns, peer_name=peer.link.name)
            out[link.name] = (r.index, link)
        return out

    def state(self, netns: str, *, entries: bool) -> NamespaceState:
        links = self.links(netns)
        names = {index: link.name for index, link in links.values()}
        kinds = {index: link.kind for index, link in links.values()}
        sock = self.sock(netns)
        addresses = []
        for msg in sock.dump_addresses():
            dev = names.get(msg["index"])
            ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if dev is None or ip is None:
                continue
            iface = ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")
            if iface.version == 6 and iface.ip.is_link_local:
                continue
            if kinds[msg["index"]] == "loopback" and iface.with_prefixlen in ("127.0.0.1/8", "::1/128"):
                continue
            addresses.append(Address(dev, iface.with_prefixlen))
        fdb: list[FdbEntry] = []
        neighbours: list[Neighbour] = []
        if entries:
            for r in sock.dump_neighbours(nlwire.AF_BRIDGE):
                if kinds.get(r.ifindex) == "vxlan" and r.flags & nlwire.NTF_SELF and r.mac and r.dst:
                    permanent = bool(r.state & nlwire.NUD_PERMANENT)
                    fdb.append(FdbEntry(names[r.ifindex], r.mac, r.dst, r.vni, permanent))
            for r in sock.dump_neighbours(socket.AF_UNSPEC):
                kind = kinds.get(r.ifindex)
                if kind is None or kind == "loopback" or not r.mac or not r.dst:
                    continue
                if r.family not in (socket.AF_INET, socket.AF_INET6) or r.state & (
                    NUD_INCOMPLETE | NUD_FAILED
                ):
                    continue
                if _is_multicast(r.dst):
                    continue
                neighbours.append(
                    Neighbour(names[r.ifindex], r.dst, r.mac, bool(r.state & nlwire.NUD_PERMANENT))
                )
        return NamespaceState.of(
            links=(link for _, link in links.values()), addresses=addresses, fdb=fdb, neighbours=neighbours
        )

    def snapshot(self, *, entries: bool) -> Snapshot:
        return Snapshot({ns: self.state(ns, entries=entries) for ns in self.scope if self.fd(ns) is not None})


def _check_scope(scope: Iterable[str]) -> tuple[str, ...]:
    names = tuple(sorted(set(scope)))
    for name in names:
        if not valid_netns(name):
            raise ValueError(f"scope entry {name!r} is not a namespace name or absolute path")
    return names


class NetlinkDataplane:
    """The kernel dataplane (module docstring). Needs CAP_NET_ADMIN and CAP_SYS_ADMIN (root).

    The *own* namespace, where VXLAN devices with ``underlay`` None keep their socket, is the namespace
    of the thread that constructs this object. ``close()`` (or ``with``) releases its one fd.
    """

    def __init__(self) -> None:
        self._own_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._exec = {
            AddNetns: self._add_netns,
            DelNetns: self._del_netns,
            AddBridge: self._add_bridge,
            AddVxlan: self._add_vxlan,
            AddVeth: self._add_veth,
            DelLink: self._del_link,
            SetLinkUp: self._set_up,
            SetLinkDown: self._set_down,
            SetLinkMaster: self._set_master,
            SetLinkMtu: self._set_mtu,
            AddAddress: self._add_address,
            DelAddress: self._del_address,
        }
        assert set(self._exec) | set(_ENTRY_OPS) == set(ALL_OPS)

    def close(self) -> None:
        """Release the own-namespace fd."""
        if self._own_fd >= 0:
            os.close(self._own_fd)
            self._own_fd = -1

    def __enter__(self) -> NetlinkDataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the port -------------------------------------------------------------------------------

    def observe(self, scope: Iterable[str]) -> Snapshot:
        """Links, addresses, FDB and neighbour entries of the namespaces in ``scope`` that exist."""
        session = _Session(self._own_fd, _check_scope(scope))
        try:
            return session.snapshot(entries=True)
        except NlError as exc:
            raise DataplaneError(None, exc.errno, f"observe: {exc.message}") from None
        finally:
            session.close()

    def apply(self, plan: Plan) -> ApplyResult:
        """Validate ``plan`` against the observed links, then carry it out in order (module docstring)."""
        plan = tuple(plan)
        if not plan:
            return ApplyResult(applied=0)
        session = _Session(self._own_fd, plan_namespaces(plan))
        try:
            try:
                before = session.snapshot(entries=False)
            except NlError as exc:
                raise DataplaneError(None, exc.errno, f"observe before apply: {exc.message}") from None
            MemoryDataplane(before).apply(plan)
            return self._execute(session, plan)
        finally:
            session.close()

    # --- execution ------------------------------------------------------------------------------

    def _execute(self, s: _Session, plan: Plan) -> ApplyResult:
        bulk = 0
        i = 0
        while i < len(plan):
            op = plan[i]
            if isinstance(op, _ENTRY_OPS):
                j = i + 1
                while j < len(plan) and isinstance(plan[j], _ENTRY_OPS) and plan[j].netns == op.netns:
                    j += 1
                self._entries(s, plan[i:j], i)  # type: ignore[arg-type]
                bulk += j - i
                i = j
                continue
            try:
                self._exec[type(op)](s, op)
            except NlError as exc:
                raise DataplaneError(op, exc.errno, exc.message, index=i) from None
            i += 1
        return ApplyResult(applied=len(plan), bulk=bulk)

    def _entries(self, s: _Session, ops: tuple[EntryOp, ...], base: int) -> None:
        netns = ops[0].netns
        adds = [k for k, op in enumerate(ops) if isinstance(op, AddFdbEntry | AddNeighbour)]
        if s.fd(netns) is None:
            if adds:
                k = adds[0]
                raise DataplaneError(
                    ops[k], errno.ENOENT, f"network namespace {netns!r} does not exist", index=base + k
                )
            return
        try:
            links = s.links(netns)
            sock = s.sock(netns)
            first = sock.reserve(len(ops))
            messages: list[bytes] = []
            missing: int | None = None
            for k, op in enumerate(ops):
                dev = links.get(op.dev)
                if dev is None:
                    if isinstance(op, AddFdbEntry | AddNeighbour):
                        missing = k
                        break
                    continue  # deleting from a missing device: nothing to delete
                if isinstance(op, DelFdbEntry) and dev[1].kind != "vxlan":
                    continue  # only VXLAN devices hold our FDB entries (others answer EINVAL)
                index = dev[0]
                if isinstance(op, AddFdbEntry):
                    state = nlwire.FDB_PERMANENT if op.permanent else nlwire.FDB_STATIC
                    messages.append(
                        nlwire.pack_fdb(first + k, index, op.mac, op.dst, op.vni, state, add=True)
                    )
                elif isinstance(op, DelFdbEntry):
                    messages.append(nlwire.pack_fdb(first + k, index, op.mac, None, None, 0, add=False))
                elif isinstance(op, AddNeighbour):
                    messages.append(nlwire.pack_neigh(first + k, index, op.ip, op.mac, add=True))
                else:
                    messages.append(nlwire.pack_neigh(first + k, index, op.ip, None, add=False))
            errors = sock.bulk(messages, first, len(ops))
        except NlError as exc:
            raise DataplaneError(ops[0], exc.errno, exc.message, index=base) from None
        for k in sorted(errors):
            error = errors[k]
            if isinstance(ops[k], DelFdbEntry | DelNeighbour) and error.errno in (errno.ENOENT, errno.ENODEV):
                continue
            raise DataplaneError(ops[k], error.errno, error.message, index=base + k)
        if missing is not None:
            raise DataplaneError(
                ops[missing],
                errno.ENODEV,
                f"device {ops[missing].dev!r} does not exist",
                index=base + missing,
            )

    # --- namespaces -----------------------------------------------------------------------------

    def _add_netns(self, s: _Session, op: AddNetns) -> None:
        try:
            nlwire.create_netns(op.name)
        except OSError as exc:
            raise NlError(exc.errno or errno.EIO, str(exc)) from None
        s.forget(op.name)

    def _del_netns(self, s: _Session, op: DelNetns) -> None:
        if s.fd(op.name) is None:
            return
        # Delete the links first so veth peers elsewhere go now, not when the kernel reaps the namespace.
        for _ in range(3):
            links = [(index, link) for index, link in s.links(op.name).values() if link.kind != "loopback"]
            if not links:
                break
            for index, _link in links:
                self._request_ignoring(
                    s.sock(op.name), nlwire.link_message(nlwire.RTM_DELLINK, 0, index=index), errno.ENODEV
                )
            for netns in list(s.raw):
                s.changed(netns)
        try:
            nlwire.remove_netns(op.name)
        except OSError as exc:
            raise NlError(exc.errno or errno.EIO, str(exc)) from None
        s.forget(op.name)
        for netns in list(s.raw):
            s.changed(netns)

    # --- links ----------------------------------------------------------------------------------

    @staticmethod
    def _request_ignoring(sock: NlSocket, msg, *ignored: int) -> None:  # type: ignore[no-untyped-def]
        try:
            sock.request(msg)
        except NlError as exc:
            if exc.errno not in ignored:
                raise

    @staticmethod
    def _index(s: _Session, netns: str, name: str) -> int:
        found = s.links(netns).get(name)
        if found is None:
            raise NlError(errno.ENODEV, f"device {name!r} does not exist in {netns!r}")
        return found[0]

    def _delete(self, s: _Session, netns: str, name: str) -> None:
        found = s.links(netns).get(name) if s.fd(netns) is not None else None
        if found is None:
            return
        msg = nlwire.link_message(nlwire.RTM_DELLINK, 0, index=found[0])
        self._request_ignoring(s.sock(netns), msg, errno.ENODEV)
        for other in list(s.raw):  # a veth takes its peer along, wherever it is
            s.changed(other)

    def _set(
        self, s: _Session, netns: str, name: str, *, up: bool | None = None, attrs: list | None = None
    ) -> None:
        index = self._index(s, netns, name)
        s.sock(netns).request(nlwire.link_message(nlwire.RTM_NEWLINK, 0, index=index, up=up, attrs=attrs))
        s.changed(netns)

    def _update(self, s: _Session, netns: str, link: Link, mac: str | None, mtu: int | None) -> None:
        """Set MAC and MTU where they differ (setting even the same MAC flushes neighbours)."""
        changes = [
            (k, v)
            for k, v, now in (("IFLA_ADDRESS", mac, link.mac), ("IFLA_MTU", mtu, link.mtu))
            if v is not None and v != now
        ]
        if changes:
            self._set(s, netns, link.name, attrs=changes)

    def _add_bridge(self, s: _Session, op: AddBridge) -> None:
        existing = s.links(op.netns).get(op.name)
        if existing is None or existing[1].kind != "bridge":
            self._delete(s, op.netns, op.name)
            attrs: list = [
                ("IFLA_IFNAME", op.name),
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]}),
            ]
            if op.mac is not None:
                attrs.append(("IFLA_ADDRESS", op.mac))
            s.sock(op.netns).request(nlwire.link_message(nlwire.RTM_NEWLINK, _CREATE, attrs=attrs))
            s.changed(op.netns)
        elif op.mac is not None and op.mac != existing[1].mac:
            self._set(s, op.netns, op.name, attrs=[("IFLA_ADDRESS", op.mac)])
        if op.mtu is not None:  # a separate request, so the bridge keeps it (ops.AddBridge)
            self._set(s, op.netns, op.name, attrs=[("IFLA_MTU", op.mtu)])

    def _add_vxlan(self, s: _Session, op: AddVxlan) -> None:
        existing = s.links(op.netns).get(op.name)
        if existing is not None and vxlan_matches(existing[1], op):
            self._update(s, op.netns, existing[1], op.mac, op.mtu)
            return
        self._delete(s, op.netns, op.name)
        data: list = [
            ("IFLA_VXLAN_ID", op.vni),
            ("IFLA_VXLAN_PORT", op.dstport),
            ("IFLA_VXLAN_LEARNING", int(op.learning)),
            ("IFLA_VXLAN_PROXY", int(op.proxy)),
        ]
        if op.local is not None:
            data.append(("IFLA_VXLAN_LOCAL6" if ":" in op.local else "IFLA_VXLAN_LOCAL", op.local))
        attrs: list = [("IFLA_IFNAME", op.name)]
        attrs += [(k, v) for k, v in (("IFLA_MTU", op.mtu), ("IFLA_ADDRESS", op.mac)) if v is not None]
        attrs.append(
            ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": data})]})
        )
        if op.underlay == op.netns:
            creator = s.sock(op.netns)
        else:
            # Sent from the underlay's namespace, created straight into the target one: the UDP socket
            # stays in the underlay, the device never appears there.
            creator = s.own_sock() if op.underlay is None else s.sock(op.underlay)
            target = s.fd(op.netns)
            if target is None:
                raise NlError(errno.ENOENT, f"network namespace {op.netns!r} does not exist")
            attrs.append(("IFLA_NET_NS_FD", target))
        creator.request(nlwire.link_message(nlwire.RTM_NEWLINK, _CREATE, attrs=attrs))
        s.changed(op.netns)

    def _add_veth(self, s: _Session, op: AddVeth) -> None:
        mine = s.links(op.netns).get(op.name)
        theirs = s.links(op.peer_netns).get(op.peer_name)
        if mine is not None and theirs is not None and veth_paired(mine[1], theirs[1], op):
            self._update(s, op.netns, mine[1], op.mac, op.mtu)
            self._update(s, op.peer_netns, theirs[1], op.peer_mac, op.mtu)
            return
        self._delete(s, op.netns, op.name)
        self._delete(s, op.peer_netns, op.peer_name)
        peer_fd = s.fd(op.peer_netns)
        if peer_fd is None:
            raise NlError(errno.ENOENT, f"network namespace {op.peer_netns!r} does not exist")
        peer: list = [("IFLA_IFNAME", op.peer_name), ("IFLA_NET_NS_FD", peer_fd)]
        peer += [(k, v) for k, v in (("IFLA_MTU", op.mtu), ("IFLA_ADDRESS", op.peer_mac)) if v is not None]
        attrs: list = [("IFLA_IFNAME", op.name)]
        attrs += [(k, v) for k, v in (("IFLA_MTU", op.mtu), ("IFLA_ADDRESS", op.mac)) if v is not None]
        info = {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]}
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", info)]}))
        s.sock(op.netns).request(nlwire.link_message(nlwire.RTM_NEWLINK, _CREATE, attrs=attrs))
        s.changed(op.netns)
        s.changed(op.peer_netns)

    def _del_link(self, s: _Session, op: DelLink) -> None:
        self._delete(s, op.netns, op.name)

    def _set_up(self, s: _Session, op: SetLinkUp) -> None:
        self._set(s, op.netns, op.name, up=True)

    def _set_down(self, s: _Session, op: SetLinkDown) -> None:
        self._set(s, op.netns, op.name, up=False)

    def _set_master(self, s: _Session, op: SetLinkMaster) -> None:
        master = 0 if op.master is None else self._index(s, op.netns, op.master)
        self._set(s, op.netns, op.name, attrs=[("IFLA_MASTER", master)])

    def _set_mtu(self, s: _Session, op: SetLinkMtu) -> None:
        self._set(s, op.netns, op.name, attrs=[("IFLA_MTU", op.mtu)])

    # --- addresses ------------------------------------------------------------------------------

    def _add_address(self, s: _Session, op: AddAddress) -> None:
        index = self._index(s, op.netns, op.dev)
        iface = ipaddress.ip_interface(op.cidr)
        sock = s.sock(op.netns)
        if iface.version == 6:
            # The kernel keeps an IPv6 address's old prefix length on replace: delete it first.
            for msg in sock.dump_addresses():
                ip = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
                if (
                    msg["index"] == index
                    and ip
                    and ipaddress.ip_address(ip) == iface.ip
                    and msg["prefixlen"] != iface.network.prefixlen
                ):
                    self._request_ignoring(
                        sock,
                        nlwire.addr_message(
                            nlwire.RTM_DELADDR, 0, index=index, ip=str(iface.ip), prefixlen=msg["prefixlen"]
                        ),
                        errno.EADDRNOTAVAIL,
                    )
        sock.request(
            nlwire.addr_message(
                nlwire.RTM_NEWADDR, _REPLACE, index=index, ip=str(iface.ip), prefixlen=iface.network.prefixlen
            )
        )

    def _del_address(self, s: _Session, op: DelAddress) -> None:
        if s.fd(op.netns) is None:
            return
        found = s.links(op.netns).get(op.dev)
        if found is None:
            return
        iface = ipaddress.ip_interface(op.cidr)
        msg = nlwire.addr_message(
            nlwire.RTM_DELADDR, 0, index=found[0], ip=str(iface.ip), prefixlen=iface.network.prefixlen
        )
        self._request_ignoring(s.sock(op.netns), msg, errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV)
