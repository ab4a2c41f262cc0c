"""Dataplane ops: the imperative, frozen values a plan is made of.

Theory of operation
-------------------
A reconciler never touches the kernel. It compares desired state with an observed ``Snapshot`` and
emits a *plan*: an ordered tuple of the ops below. ``Dataplane.apply(plan)`` carries them out in order.

House rules (every implementation of ``meshnet.dataplane.api.Dataplane`` keeps them):

1. **Idempotent.** Every ``Add*``/``Set*`` op has replace semantics: it leaves the object exactly as
   described whether or not it existed before. Every ``Del*`` op of a missing object succeeds. So the
   same plan applied twice changes nothing the second time, and re-applying after a partial failure
   converges.
2. **Named namespaces only.** Every object lives in a network namespace the op names: ``netns`` is a
   name under ``/run/netns`` (``AddNetns``/``DelNetns`` create and remove those) or an absolute path to an
   existing namespace (a container's ``/proc/PID/ns/net``, Docker's sandbox key). No op can address the
   namespace the agent itself runs in; the one thing that may live there is the UDP socket of a VXLAN
   device whose ``underlay`` is None (the kernel keeps a VXLAN socket in the namespace the device was
   created from; libnetwork creates the device there and moves it into the overlay namespace).
3. **Validated values.** Constructors check and canonicalise their fields (interface names of at most
   15 bytes, MACs as lower-case ``aa:bb:cc:dd:ee:ff``, IPs in ``ipaddress`` text form, VNIs of 24 bits)
   and raise ``ValueError`` naming the field. A reconciler building ops from replicated tables must treat
   that error as bad remote input.
4. **Replace may recreate.** An ``Add*`` op for a link that exists with another kind, or whose immutable
   attributes differ (a VXLAN's VNI, port, local address, learning, proxy or underlay; a veth's peer),
   deletes it and creates it anew: its master, up state, addresses, FDB and neighbour entries go with it,
   so a plan that replaces a device must add those again after it.

Entries: ``AddFdbEntry`` programs one VXLAN forwarding entry, MAC -> remote VTEP (``bridge fdb replace MAC
dev VX dst IP self permanent``); ``AddNeighbour`` one permanent ARP/ND entry, IP -> MAC (``ip neigh replace
IP lladdr MAC dev DEV nud permanent``). Both are what libnetwork's peerdb programs per remote endpoint
(libnetwork.md section 3.4). ``DelFdbEntry`` removes the whole entry for that MAC whatever its remote, so a
delete really deletes (the kernel's ``del`` with a wrong ``dst`` silently removes nothing).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "AddNetns",
    "DelNetns",
    "AddBridge",
    "AddVxlan",
    "AddVeth",
    "DelLink",
    "SetLinkUp",
    "SetLinkDown",
    "SetLinkMaster",
    "SetLinkMtu",
    "AddAddress",
    "DelAddress",
    "AddFdbEntry",
    "DelFdbEntry",
    "AddNeighbour",
    "DelNeighbour",
    "Op",
    "Plan",
    "LinkOp",
    "EntryOp",
    "VXLAN_PORT",
    "op_namespaces",
    "canonical_mac",
    "valid_netns",
]

#: IANA's VXLAN port, libnetwork's default data-path port.
VXLAN_PORT = 4789

_NETNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_IFNAME_BAD = re.compile(r"[\s/:]")
_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def _field(op: object, name: str, value: object) -> None:
    object.__setattr__(op, name, value)


def _bad(op: object, name: str, value: object, why: str) -> ValueError:
    return ValueError(f"{type(op).__name__}.{name}={value!r}: {why}")


def _check_netns(op: object, name: str, value: object, *, named_only: bool = False) -> None:
    if not isinstance(value, str):
        raise _bad(op, name, value, "must be a namespace name or an absolute path")
    if value.startswith("/"):
        if named_only:
            raise _bad(op, name, value, "must be a name under /run/netns, not a path")
        if "\0" in value or value.rstrip("/") == "":
            raise _bad(op, name, value, "is not a usable namespace path")
        return
    if _NETNS_NAME.fullmatch(value) is None or value in (".", ".."):
        raise _bad(op, name, value, "must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,63} or be an absolute path")


def valid_netns(value: object) -> bool:
    """Whether ``value`` names a namespace as ops do: a plain name or an absolute path."""
    try:
        _check_netns(None, "netns", value)
    except ValueError:
        return False
    return True


def _check_ifname(op: object, name: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value.encode()) > 15:
        raise _bad(op, name, value, "an interface name has 1 to 15 bytes")
    if _IFNAME_BAD.search(value) or value in (".", ".."):
        raise _bad(op, name, value, "an interface name has no whitespace, '/' or ':'")


def canonical_mac(value: object) -> str | None:
    """``value`` as a lower-case ``aa:bb:cc:dd:ee:ff`` string, or None when it is not a MAC."""
    if not isinstance(value, str) or _MAC.fullmatch(value) is None:
        return None
    return value.lower()


def _check_mac(op: object, name: str, *, optional: bool = False, link: bool = False) -> None:
    value = getattr(op, name)
    if value is None and optional:
        return
    mac = canonical_mac(value)
    if mac is None:
        raise _bad(op, name, value, "must be a MAC address like 02:42:0a:00:00:05")
    if link and (int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00"):
        raise _bad(op, name, value, "a link's MAC must be unicast and not all zeros")
    _field(op, name, mac)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _check_ip(op: object, name: str, *, optional: bool = False) -> None:
    value = getattr(op, name)
    if value is None and optional:
        return
    if isinstance(value, str) and _IPV4.fullmatch(value):
        return  # canonical IPv4 already; the fast path for the bulk ops a reconciler builds
    try:
        _field(op, name, str(ipaddress.ip_address(value)))
    except ValueError:
        raise _bad(op, name, value, "must be an IPv4 or IPv6 address") from None


def _is_multicast(ip: str) -> bool:
    if ":" in ip:
        return ipaddress.IPv6Address(ip).is_multicast
    return 224 <= int(ip.split(".", 1)[0]) <= 239


def _check_int(op: object, name: str, low: int, high: int, *, optional: bool = False) -> None:
    value = getattr(op, name)
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(op, name, value, f"must be an integer in {low}..{high}")


def _check_bool(op: object, name: str) -> None:
    value = getattr(op, name)
    if not isinstance(value, bool):
        raise _bad(op, name, value, "must be True or False")


def _check_mtu(op: object) -> None:
    _check_int(op, "mtu", 68, 65535, optional=True)


def _check_link_target(op: LinkOp) -> None:
    _check_netns(op, "netns", op.netns)
    _check_ifname(op, "name", op.name)


# --- namespaces ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AddNetns:
    """Create the named network namespace ``/run/netns/NAME`` (with ``lo`` down), if it is missing."""

    name: str

    def __post_init__(self) -> None:
        _check_netns(self, "name", self.name, named_only=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class DelNetns:
    """Delete the named namespace: first every link in it (so veth peers elsewhere go at once), then
    the ``/run/netns`` mount. Missing is success."""

    name: str

    def __post_init__(self) -> None:
        _check_netns(self, "name", self.name, named_only=True)


# --- links --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AddBridge:
    """A Linux bridge ``name`` in ``netns``.

    ``mtu`` given: the bridge keeps that MTU (set as ``ip link set mtu`` does, so the kernel stops
    following its ports). ``mtu`` None: the kernel's automatic MTU, the smallest of its ports' (1500
    with none), recomputed when a port joins, leaves or changes MTU. ``mac`` None keeps whatever address
    the bridge has (a new bridge gets a random one).
    """

    netns: str
    name: str
    mtu: int | None = None
    mac: str | None = None

    def __post_init__(self) -> None:
        _check_link_target(self)
        _check_mtu(self)
        _check_mac(self, "mac", optional=True, link=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddVxlan:
    """A VXLAN device ``name`` in ``netns`` (RFC 7348), as the overlay needs it.

    ``vni`` is the 24-bit network identifier, ``dstport`` the UDP port (4789), ``local`` the source
    address of outgoing packets (None: chosen by routing in the underlay). ``learning`` False is
    ``nolearning`` (the overlay programs every remote MAC itself); ``proxy`` True answers ARP/ND for
    remote endpoints from the device's neighbour table. ``underlay`` names the namespace whose UDP socket
    the device uses: None is the namespace the dataplane runs in (the host's), a name or path any other.
    The kernel refuses (EEXIST) a second device with the same VNI, port and address family on one
    underlay, whichever namespaces the devices live in. VNI, port, local, learning, proxy and underlay
    cannot change in place: a difference recreates the device (house rule 4).
    """

    netns: str
    name: str
    vni: int
    dstport: int = VXLAN_PORT
    local: str | None = None
    learning: bool = False
    proxy: bool = True
    mtu: int | None = None
    mac: str | None = None
    underlay: str | None = None

    def __post_init__(self) -> None:
        _check_link_target(self)
        _check_int(self, "vni", 0, (1 << 24) - 1)
        _check_int(self, "dstport", 1, 65535)
        _check_ip(self, "local", optional=True)
        _check_bool(self, "learning")
        _check_bool(self, "proxy")
        _check_mtu(self)
        _check_mac(self, "mac", optional=True, link=True)
        if self.underlay is not None:
            _check_netns(self, "underlay", self.underlay)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddVeth:
    """A veth pair: ``name`` in ``netns`` and its peer ``peer_name`` in ``peer_netns``.

    ``mtu`` applies to both ends, ``mac``/``peer_mac`` to one end each (None: random, kept on
    replace). An existing pair with these names and namespaces is kept and updated; anything else
    holding either name is deleted first (house rule 4).
    """

    netns: str
    name: str
    peer_netns: str
    peer_name: str
    mtu: int | None = None
    mac: str | None = None
    peer_mac: str | None = None

    def __post_init__(self) -> None:
        _check_link_target(self)
        _check_netns(self, "peer_netns", self.peer_netns)
        _check_ifname(self, "peer_name", self.peer_name)
        if (self.netns, self.name) == (self.peer_netns, self.peer_name):
            raise _bad(self, "peer_name", self.peer_name, "a veth's two ends need different names")
        _check_mtu(self)
        _check_mac(self, "mac", optional=True, link=True)
        _check_mac(self, "peer_mac", optional=True, link=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class DelLink:
    """Delete link ``name`` (a veth takes its peer along; a bridge frees its ports). Missing is success."""

    netns: str
    name: str

    def __post_init__(self) -> None:
        _check_link_target(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLinkUp:
    """Set link ``name`` administratively up (``ip link set up``). ``lo`` may be named too."""

    netns: str
    name: str

    def __post_init__(self) -> None:
        _check_link_target(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLinkDown:
    """Set link ``name`` administratively down. As in the kernel, a link going down loses its
    neighbour entries and its IPv6 addresses (IPv4 addresses and FDB entries stay)."""

    netns: str
    name: str

    def __post_init__(self) -> None:
        _check_link_target(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLinkMaster:
    """Make link ``name`` a port of bridge ``master`` in the same namespace; None frees it."""

    netns: str
    name: str
    master: str | None

    def __post_init__(self) -> None:
        _check_link_target(self)
        if self.master is not None:
            _check_ifname(self, "master", self.master)
            if self.master == self.name:
                raise _bad(self, "master", self.master, "a link cannot be its own master")


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLinkMtu:
    """Set link ``name``'s MTU (``ip link set mtu``; on a bridge this pins it, see ``AddBridge``)."""

    netns: str
    name: str
    mtu: int

    def __post_init__(self) -> None:
        _check_link_target(self)
        _check_int(self, "mtu", 68, 65535)


# --- addresses ----------------------------------------------------------------------------------


def _check_cidr(op: AddAddress | DelAddress) -> None:
    try:
        iface = ipaddress.ip_interface(op.cidr)
    except (ValueError, TypeError):
        raise _bad(op, "cidr", op.cidr, "must be ADDRESS/PREFIXLEN, e.g. 10.0.0.1/24") from None
    if not isinstance(op.cidr, str) or "/" not in op.cidr:
        raise _bad(op, "cidr", op.cidr, "needs an explicit /PREFIXLEN")
    _field(op, "cidr", iface.with_prefixlen)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddAddress:
    """Address ``cidr`` (``10.0.0.1/24``) on link ``dev`` (``ip addr replace``)."""

    netns: str
    dev: str
    cidr: str

    def __post_init__(self) -> None:
        _check_netns(self, "netns", self.netns)
        _check_ifname(self, "dev", self.dev)
        _check_cidr(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class DelAddress:
    """Remove address ``cidr`` from ``dev``. Missing (address or device) is success. As in the kernel,
    removing an IPv4 primary removes its secondaries, and removing a link's last IPv4 address flushes
    its IPv4 neighbour entries (``MemoryDataplane`` docstring)."""

    netns: str
    dev: str
    cidr: str

    def __post_init__(self) -> None:
        _check_netns(self, "netns", self.netns)
        _check_ifname(self, "dev", self.dev)
        _check_cidr(self)


# --- forwarding and neighbour entries -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AddFdbEntry:
    """FDB entry on VXLAN device ``dev``: frames for ``mac`` go to the VTEP ``dst``.

    ``vni`` None uses the device's VNI. ``permanent`` False makes a *static* entry (``NUD_NOARP``,
    never aged) instead of a permanent one. Only VXLAN devices take FDB entries here (EOPNOTSUPP
    otherwise). The entry has one remote: replacing sets it, whatever it was.
    """

    netns: str
    dev: str
    mac: str
    dst: str
    vni: int | None = None
    permanent: bool = True

    def __post_init__(self) -> None:
        _check_netns(self, "netns", self.netns)
        _check_ifname(self, "dev", self.dev)
        _check_mac(self, "mac")
        if int(self.mac[:2], 16) & 1:
            raise _bad(self, "mac", self.mac, "an FDB entry is for a unicast MAC (or all zeros)")
        _check_ip(self, "dst")
        _check_int(self, "vni", 0, (1 << 24) - 1, optional=True)
        _check_bool(self, "permanent")


@dataclass(frozen=True, slots=True, kw_only=True)
class DelFdbEntry:
    """Remove the FDB entry for ``mac`` on ``dev``, every remote of it. Missing is success."""

    netns: str
    dev: str
    mac: str

    def __post_init__(self) -> None:
        _check_netns(self, "netns", self.netns)
        _check_ifname(self, "dev", self.dev)
        _check_mac(self, "mac")


@dataclass(frozen=True, slots=True, kw_only=True)
class AddNeighbour:
    """Permanent neighbour (ARP for IPv4, ND for IPv6) entry ``ip`` -> ``mac`` on link ``dev``.

    Only permanent entries are programmed: the kernel keeps them until deleted, or until the link goes
    down (``SetLinkDown``), so a reconciler re-adds them after bringing a link back up.
    """

    netns: str
    dev: str
    ip: str
    mac: str

    def __post_init__(self) -> None:
        _check_netns(self, "netns", self.netns)
        _check_ifname(self, "dev", self.dev)
        _check_ip(self, "ip")
        if _is_multicast(self.ip):
            raise _bad(self, "ip", self.ip, "multicast neighbours are the kernel's own")
        _check_mac(self, "mac")


@dataclass(frozen=True, slots=True, kw_only=True)
class DelNeighbour:
    """Remove the neighbour entry for ``ip`` on ``dev``. Missing is success."""

    netns: str
    dev: str
    ip: str

    def __post_init__(self) -> None:
        _check_netns(self, "netns", self.netns)
        _check_ifname(self, "dev", self.dev)
        _check_ip(self, "ip")


LinkOp = AddBridge | AddVxlan | AddVeth | DelLink | SetLinkUp | SetLinkDown | SetLinkMaster | SetLinkMtu
EntryOp = AddFdbEntry | DelFdbEntry | AddNeighbour | DelNeighbour
Op = AddNetns | DelNetns | LinkOp | AddAddress | DelAddress | EntryOp

#: A plan: ops applied in order.
Plan = tuple[Op, ...]

#: The op types, for dispatch tables and exhaustiveness checks.
ALL_OPS: tuple[type, ...] = (
    AddNetns,
    DelNetns,
    AddBridge,
    AddVxlan,
    AddVeth,
    DelLink,
    SetLinkUp,
    SetLinkDown,
    SetLinkMaster,
    SetLinkMtu,
    AddAddress,
    DelAddress,
    AddFdbEntry,
    DelFdbEntry,
    AddNeighbour,
    DelNeighbour,
)


def op_namespaces(op: Op) -> tuple[str, ...]:
    """Every namespace ``op`` reads or changes (for ``AddNetns``/``DelNetns`` the one it names)."""
    if isinstance(op, AddNetns | DelNetns):
        return (op.name,)
    if isinstance(op, AddVeth):
        return (op.netns, op.peer_netns)
    if isinstance(op, AddVxlan) and op.underlay is not None:
        return (op.netns, op.underlay)
    return (op.netns,)
