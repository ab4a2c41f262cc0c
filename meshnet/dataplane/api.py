"""The dataplane port: what reconcilers see of the kernel (``Snapshot``) and how they change it (``apply``).

Theory of operation
-------------------
``Dataplane`` is the only way meshnet changes kernel state (DESIGN.md "Three rings"). It has two
methods, both blocking (the runtime calls them from a worker thread):

- ``observe(scope)`` reads the namespaces named in ``scope`` and returns a ``Snapshot``: plain, frozen
  values (links, addresses, FDB entries, neighbour entries per namespace), sorted, comparable with
  ``==`` and renderable as canonical text (``render``). Namespaces in ``scope`` that do not exist are
  absent from it.
- ``apply(plan)`` carries out a plan (``meshnet.dataplane.ops``) and returns an ``ApplyResult``, or raises
  ``DataplaneError(op, errno, index=...)`` naming the op the kernel refused.

What a snapshot shows is what meshnet manages, so that observe-after-apply equals what the plan asked
for, in the fake and in the kernel alike:

- every link (except the fallback tunnel devices such as ``tunl0``/``sit0`` that some kernels put in every
  new namespace), with its kind (``loopback``, ``bridge``, ``vxlan``, ``veth``, or the kernel's kind name),
  MTU, MAC, administrative up flag and master; VXLAN attributes; a veth's peer. A namespace outside the
  scope is shown as ``UNKNOWN_NETNS`` (a veth peer's or VXLAN underlay's); a VXLAN ``underlay`` of None is
  the namespace the dataplane runs in.
- addresses, except those the kernel makes by itself (IPv6 link-local ``fe80::/10``, and ``127.0.0.1/8``
  and ``::1/128`` on ``lo``);
- FDB entries of VXLAN devices (``bridge fdb ... self``); the bridge's own learned and local entries are
  the kernel's business and are left out;
- neighbour entries that carry a MAC, except multicast ones (the kernel's own); ``permanent`` tells the
  entries meshnet programs from entries the kernel learned.

Guarantees of ``apply`` (both implementations pass tests/conformance for them):

1. Ops run in plan order; each has replace (``Add*``/``Set*``) or idempotent delete (``Del*``) semantics,
   so applying a plan twice changes nothing the second time.
2. ``MemoryDataplane`` is all-or-nothing: a refused op leaves the state exactly as before.
3. ``NetlinkDataplane`` first replays the plan on a ``MemoryDataplane`` loaded with the observed links of
   every namespace the plan names: a plan that breaks a rule the fake knows (a missing namespace or
   device, a master that is not a bridge, an FDB entry on a non-VXLAN device, a VNI clash among those
   namespaces) is refused with the same error before anything changes. If the kernel still refuses an op
   (a clash with a device outside those namespaces, a race with another program), the ops before it have
   been applied, ops after it have not, except that other entries of the same bulk batch may have been,
   and a refused ``Add*`` that replaces an object may already have deleted the old one; the caller
   re-observes, re-plans and applies again, which converges because every op is idempotent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .ops import Plan, op_namespaces

__all__ = [
    "Dataplane",
    "Snapshot",
    "NamespaceState",
    "Link",
    "Address",
    "FdbEntry",
    "Neighbour",
    "ApplyResult",
    "UNKNOWN_NETNS",
    "LOOPBACK",
    "plan_namespaces",
    "render",
]

#: Shown for a veth peer's or a VXLAN underlay's namespace that lies outside the observed scope.
UNKNOWN_NETNS = "?"

#: The loopback link every namespace is born with (down, MTU 65536).
LOOPBACK = "lo"


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """One network interface as observed.

    ``up`` is the administrative flag (``ip link set up``). VXLAN fields are None for other kinds; veth
    fields are None for other kinds, and ``peer_name`` also when the peer's namespace is unknown.
    """

    name: str
    kind: str
    mtu: int
    mac: str
    up: bool = False
    master: str | None = None
    vni: int | None = None
    dstport: int | None = None
    local: str | None = None
    learning: bool | None = None
    proxy: bool | None = None
    underlay: str | None = None
    peer_netns: str | None = None
    peer_name: str | None = None


@dataclass(frozen=True, slots=True)
class Address:
    """Address ``cidr`` (``10.0.0.1/24``) on link ``dev``."""

    dev: str
    cidr: str


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """VXLAN forwarding entry on ``dev``: ``mac`` -> VTEP ``dst``; ``vni`` None is the device's VNI.
    ``permanent`` False is a static (``NUD_NOARP``) or kernel-learned entry."""

    dev: str
    mac: str
    dst: str
    vni: int | None = None
    permanent: bool = True


@dataclass(frozen=True, slots=True)
class Neighbour:
    """Neighbour entry ``ip`` -> ``mac`` on ``dev``; ``permanent`` False for entries the kernel made."""

    dev: str
    ip: str
    mac: str
    permanent: bool = True


def _ip_key(text: str) -> tuple[int, object]:
    """Numeric sort key of a canonical address (IPv4 without ``ipaddress``: observe sorts thousands)."""
    if ":" in text:
        return (6, int(ipaddress.IPv6Address(text)))
    return (4, tuple(map(int, text.split("."))))


def _cidr_key(address: Address) -> tuple[str, int, int, int]:
    iface = ipaddress.ip_interface(address.cidr)
    return (address.dev, iface.version, int(iface.ip), iface.network.prefixlen)


@dataclass(frozen=True, slots=True)
class NamespaceState:
    """Everything a snapshot shows of one namespace, each tuple in canonical (sorted) order.

    Build it with ``NamespaceState.of(...)``, which sorts; the raw constructor trusts its input.
    """

    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    fdb: tuple[FdbEntry, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()

    @classmethod
    def of(
        cls,
        links: Iterable[Link] = (),
        addresses: Iterable[Address] = (),
        fdb: Iterable[FdbEntry] = (),
        neighbours: Iterable[Neighbour] = (),
    ) -> NamespaceState:
        """A state with every tuple sorted canonically."""
        return cls(
            links=tuple(sorted(links, key=lambda link: link.name)),
            addresses=tuple(sorted(addresses, key=_cidr_key)),
            fdb=tuple(sorted(fdb, key=lambda e: (e.dev, e.mac, _ip_key(e.dst), e.vni or 0))),
            neighbours=tuple(sorted(neighbours, key=lambda n: (n.dev, _ip_key(n.ip)))),
        )

    @classmethod
    def fresh(cls) -> NamespaceState:
        """A namespace as the kernel creates it: ``lo`` down and nothing else."""
        return cls(links=(Link(name=LOOPBACK, kind="loopback", mtu=65536, mac="00:00:00:00:00:00"),))

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        for link in self.links:
            if link.name == name:
                return link
        return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Observed state of some namespaces: ``namespaces`` maps a namespace (name or path) to its state."""

    namespaces: Mapping[str, NamespaceState] = field(default_factory=dict)

    def __contains__(self, netns: object) -> bool:
        return netns in self.namespaces

    def get(self, netns: str) -> NamespaceState | None:
        """The state of ``netns``, or None when it was not observed (or does not exist)."""
        return self.namespaces.get(netns)

    def link(self, netns: str, name: str) -> Link | None:
        """Link ``name`` in ``netns``, or None."""
        state = self.namespaces.get(netns)
        return None if state is None else state.link(name)

    def restrict(self, scope: Iterable[str]) -> Snapshot:
        """Only the namespaces in ``scope`` (peer and underlay names are left as they are)."""
        wanted = set(scope)
        return Snapshot({ns: st for ns, st in self.namespaces.items() if ns in wanted})

    def render(self) -> str:
        """Canonical text, one object a line, for goldens and diffs (see ``render``)."""
        return render(self)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``apply`` did: ``applied`` ops carried out (all of the plan), ``bulk`` of them sent in bulk
    netlink batches (always 0 for ``MemoryDataplane``)."""

    applied: int
    bulk: int = 0


@runtime_checkable
class Dataplane(Protocol):
    """The port every kernel-changing implementation provides (module docstring: guarantees)."""

    def observe(self, scope: Iterable[str]) -> Snapshot:
        """The state of the namespaces in ``scope`` that exist."""
        ...

    def apply(self, plan: Plan) -> ApplyResult:
        """Carry out ``plan`` in order; raise ``DataplaneError`` for a refused op."""
        ...


def plan_namespaces(plan: Plan) -> tuple[str, ...]:
    """Every namespace the ops of ``plan`` name, sorted, each once."""
    seen: set[str] = set()
    for op in plan:
        seen.update(op_namespaces(op))
    return tuple(sorted(seen))


def _render_link(link: Link) -> str:
    parts = [f"link {link.name} {link.kind}"]
    if link.kind == "vxlan":
        parts.append(f"id {link.vni} dstport {link.dstport}")
        if link.local is not None:
            parts.append(f"local {link.local}")
        parts.append("learning" if link.learning else "nolearning")
        if link.proxy:
            parts.append("proxy")
        parts.append(f"underlay {link.underlay if link.underlay is not None else '-'}")
    if link.kind == "veth":
        parts.append(f"peer {link.peer_netns}/{link.peer_name if link.peer_name is not None else '?'}")
    parts.append(f"mtu {link.mtu} address {link.mac}")
    if link.master is not None:
        parts.append(f"master {link.master}")
    parts.append("state UP" if link.up else "state DOWN")
    return " ".join(parts)


def render(snapshot: Snapshot) -> str:
    """Canonical text of ``snapshot``, in the spirit of ``ip``/``bridge`` output::

    netns ov-1
      link vx0 vxlan id 42 dstport 4789 nolearning proxy underlay - mtu 1450 address ... state UP
      addr 10.0.0.1/24 dev br0
      fdb 02:42:0a:00:00:05 dev vx0 dst 192.0.2.2 self permanent
      neigh 10.0.0.5 dev vx0 lladdr 02:42:0a:00:00:05 PERMANENT
    """
    lines: list[str] = []
    for netns in sorted(snapshot.namespaces):
        state = snapshot.namespaces[netns]
        lines.append(f"netns {netns}")
        lines.extend(f"  {_render_link(link)}" for link in state.links)
        lines.extend(f"  addr {a.cidr} dev {a.dev}" for a in state.addresses)
        for e in state.fdb:
            vni = f" vni {e.vni}" if e.vni is not None else ""
            lines.append(
                f"  fdb {e.mac} dev {e.dev} dst {e.dst}{vni} self {'permanent' if e.permanent else 'static'}"
            )
        for n in state.neighbours:
            lines.append(
                f"  neigh {n.ip} dev {n.dev} lladdr {n.mac} {'PERMANENT' if n.permanent else 'dynamic'}"
            )
    return "\n".join(lines) + ("\n" if lines else "")
