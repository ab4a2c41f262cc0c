"""What the overlay reconciler reads (``HostView``) and the kernel names it derives from it.

Theory of operation. A host's overlay is a pure function of its *view*: the networks it has local
endpoints on (``NetworkRecord`` from the global ``networks`` table), every ``EndpointRecord`` of those
networks (local and remote, from their ``endpoint_table``), and the host's own sandboxes with the
endpoints joined to them (the ``cnm`` service's local state, ``sandboxes.json``). The reconciler never
asks anything else, so the same view always gives the same desired state on every run, after a restart
too (adoption), and a view built from replicated tables gives every host the same remote entries.

Names (docs/agent-services.md section 3); every object carries the agent's ``netns_prefix``:

- overlay namespace of a network: ``{prefix}ov-{vni}``, holding ``br0``, ``vxlan0`` and the bridge ends
  ``ve-{endpoint id[:8]}`` of the local endpoints' veths;
- a sandbox meshnet created: ``{prefix}sb-{sandbox name}``; a sandbox handed in by path keeps its path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshnet.cnm.records import EndpointRecord, NetworkRecord

__all__ = [
    "BRIDGE",
    "VXLAN",
    "VXLAN_OVERHEAD",
    "HostView",
    "LocalSandbox",
    "overlay_netns",
    "sandbox_netns",
    "veth_name",
    "is_managed_netns",
]

#: The overlay bridge in every overlay namespace (the subnet gateways are its addresses).
BRIDGE = "br0"
#: The VXLAN device in every overlay namespace.
VXLAN = "vxlan0"
#: Bytes VXLAN adds (inner Ethernet 14 + outer IPv4 20 + UDP 8 + VXLAN 8): overlay MTU = underlay - 50.
VXLAN_OVERHEAD = 50


def overlay_netns(prefix: str, vni: int) -> str:
    """The overlay namespace of the network with VNI ``vni``: ``{prefix}ov-{vni}``."""
    return f"{prefix}ov-{vni}"


def sandbox_netns(prefix: str, name: str) -> str:
    """The namespace of a sandbox meshnet creates: ``{prefix}sb-{name}``."""
    return f"{prefix}sb-{name}"


def veth_name(endpoint_id: str) -> str:
    """The bridge end of a local endpoint's veth: ``ve-{endpoint id[:8]}``."""
    return f"ve-{endpoint_id[:8]}"


def is_managed_netns(prefix: str, netns: str) -> bool:
    """Whether ``netns`` is a namespace name meshnet with this prefix creates (and so may delete):
    ``{prefix}ov-<digits>`` or ``{prefix}sb-<name>``. Paths are never managed."""
    if netns.startswith("/") or not netns.startswith(prefix):
        return False
    rest = netns[len(prefix) :]
    if rest.startswith("ov-"):
        return re.fullmatch(r"[0-9]+", rest[3:]) is not None
    return rest.startswith("sb-") and len(rest) > 3


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSandbox:
    """A sandbox on this host, as the reconciler needs it.

    ``netns`` is the namespace name (``{prefix}sb-{name}`` for ``managed`` sandboxes, which the reconciler
    creates with ``lo`` up and deletes when the sandbox is gone) or an absolute path (``/run/netns/X``,
    ``/proc/PID/ns/net``) of a namespace someone else owns: then only the interfaces are meshnet's.
    ``interfaces`` are the joined endpoints, ``(endpoint id, interface name)`` in join order; the name
    (``eth0``, ``eth1``, ...) is chosen at join and kept, so a leave never renames the others.
    """

    id: str
    netns: str
    managed: bool = True
    interfaces: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HostView:
    """Everything the reconciler of one host reads (module docstring).

    ``host`` is this node's name (an endpoint is local when ``record.host == host``); ``vtep`` this
    host's data-path address (records of another host that carry it are ignored, as libnetwork ignores
    peer records with its own VTEP; None: no such check). ``vxlan_local`` is the source address of this
    host's VXLAN packets, the ``local`` of every ``vxlan0``: the data address when it is assigned to an
    interface of the agent's namespace (libnetwork sets the data-path address as the VXLAN device's
    local address), so multi-homed hosts and firewalls see VXLAN from the advertised VTEP; None lets
    routing choose (a NATed advertise address, which no interface holds). It must be IPv4 (the overlay's
    VXLAN is IPv4; ``ValueError`` otherwise). A change recreates every ``vxlan0`` (``local`` cannot
    change in place), with its entries re-added in the same plan. ``underlay_mtu`` gives the overlay MTU of
    networks that do not set one (``underlay_mtu - 50``). ``networks`` may hold more networks than the
    host has local endpoints on (those get nothing); ``endpoints`` are the records of every network in
    ``networks`` (others are ignored).
    """

    host: str
    netns_prefix: str = "mn-"
    underlay_mtu: int = 1500
    vtep: str | None = None
    vxlan_local: str | None = None
    networks: tuple[NetworkRecord, ...] = ()
    endpoints: tuple[EndpointRecord, ...] = ()
    sandboxes: tuple[LocalSandbox, ...] = ()

    def __post_init__(self) -> None:
        if self.vxlan_local is not None:
            try:
                ip = ipaddress.ip_address(self.vxlan_local)
            except ValueError:
                raise ValueError(f"vxlan_local {self.vxlan_local!r} is not an IP address") from None
            if ip.version != 4 or ip.is_unspecified or ip.is_multicast:
                raise ValueError(
                    f"vxlan_local {self.vxlan_local!r} is not a unicast IPv4 address (the overlay's VXLAN is IPv4)"
                )
            if str(ip) != self.vxlan_local:
                raise ValueError(f"vxlan_local {self.vxlan_local!r} is not in canonical form ({ip})")

    @classmethod
    def of(
        cls,
        *,
        host: str,
        netns_prefix: str = "mn-",
        underlay_mtu: int = 1500,
        vtep: str | None = None,
        vxlan_local: str | None = None,
        networks: Iterable[NetworkRecord] = (),
        endpoints: Iterable[EndpointRecord] = (),
        sandboxes: Iterable[LocalSandbox] = (),
    ) -> HostView:
        """A view from any iterables (stored as tuples)."""
        return cls(
            host=host,
            netns_prefix=netns_prefix,
            underlay_mtu=underlay_mtu,
            vtep=vtep,
            vxlan_local=vxlan_local,
            networks=tuple(networks),
            endpoints=tuple(endpoints),
            sandboxes=tuple(sandboxes),
        )
