"""The CNM's NetworkDB records: networks (global table) and endpoints (per-network table).

Theory of operation. These are the values every host reads to build its overlay, its DNS names and its
load balancing, so their format is a contract between hosts: JSON objects with sorted keys (stable
bytes for equal records), unknown fields ignored on decode (a newer host may add fields), missing
optional fields defaulted. ``decode_*`` raise ``DecodeError`` on anything malformed: the caller counts
and drops it (remote input never raises out of a core).

Tables (``docs/agent-services.md`` is the full contract):

- ``networks`` in the global NetworkDB network ``""``, key = network id, written by the creating host.
  The network's NetworkDB network id (for its per-network tables) is the same id.
- ``endpoint_table`` in the network's own NetworkDB network, key = endpoint id, written by the host the
  endpoint lives on. It carries both what service discovery needs (name, aliases, addresses) and what
  the overlay needs (MAC, the host's VTEP address): libnetwork's ``endpoint_table`` and
  ``overlay_peer_table`` in one row, so a container's name and its reachability change together.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from meshnet.core.errors import DecodeError

__all__ = [
    "TABLE_NETWORKS",
    "TABLE_ENDPOINTS",
    "SubnetRecord",
    "NetworkRecord",
    "EndpointRecord",
    "encode_network",
    "decode_network",
    "encode_endpoint",
    "decode_endpoint",
    "mac_from_ip",
]

#: Global table (NetworkDB network ``""``): network id -> ``NetworkRecord``.
TABLE_NETWORKS = "networks"
#: Per-network table (NetworkDB network = network id): endpoint id -> ``EndpointRecord``.
TABLE_ENDPOINTS = "endpoint_table"


@dataclass(frozen=True, slots=True)
class SubnetRecord:
    """One subnet of a network and its gateway (the overlay bridge's address on every host)."""

    subnet: str  # "10.0.1.0/24" or "fd00:1::/64", canonical
    gateway: str  # "10.0.1.1"


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    """A cluster-wide network (libnetwork's overlay network, cluster scope)."""

    id: str
    name: str
    vni: int
    subnets: tuple[SubnetRecord, ...]
    driver: str = "overlay"
    #: Overlay MTU; 0 means "underlay MTU - 50" computed by each host.
    mtu: int = 0
    vxlan_port: int = 4789
    labels: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    attachable: bool = True
    #: Node name of the creating host, and its wall-clock creation time (for display and name ties).
    creator: str = ""
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """A container's attachment to one network, as every host of the network sees it."""

    id: str
    name: str
    network: str  # network id
    host: str  # node name of the host the endpoint lives on (the entry's owner)
    vtep: str  # that host's data-path (underlay) address: the VXLAN tunnel's remote end
    mac: str  # "02:42:0a:00:01:05", lower case
    ipv4: str | None = None  # "10.0.1.5" (address only; the prefix is the network's)
    ipv6: str | None = None
    aliases: tuple[str, ...] = ()
    sandbox: str = ""  # sandbox id on ``host`` (local meaning only)
    #: Service this endpoint is a task of (service discovery), or "".
    service: str = ""

    def addresses(self) -> tuple[str, ...]:
        """IPv4 then IPv6 address, those that are set."""
        return tuple(a for a in (self.ipv4, self.ipv6) if a)


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _load(value: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{what}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: not a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str, what: str, *, default: str | None = None, empty: bool = False) -> str:
    v = obj.get(key, default)
    if not isinstance(v, str) or (not v and not empty):
        raise DecodeError(f"{what}: field {key!r} must be a non-empty string")
    return v


def _int(obj: dict[str, Any], key: str, what: str, low: int, high: int, default: int | None = None) -> int:
    v = obj.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise DecodeError(f"{what}: field {key!r} must be an integer in {low}..{high}")
    return v


def _bool(obj: dict[str, Any], key: str, what: str, default: bool) -> bool:
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise DecodeError(f"{what}: field {key!r} must be true or false")
    return v


def _ip(v: Any, what: str, version: int | None = None) -> str:
    try:
        ip = ipaddress.ip_address(v)
    except (ValueError, TypeError):
        raise DecodeError(f"{what}: {v!r} is not an IP address") from None
    if version is not None and ip.version != version:
        raise DecodeError(f"{what}: {v!r} is not an IPv{version} address")
    return str(ip)


def encode_network(rec: NetworkRecord) -> bytes:
    """The ``networks`` table value of ``rec``."""
    return _dump(
        {
            "id": rec.id,
            "name": rec.name,
            "vni": rec.vni,
            "subnets": [{"subnet": s.subnet, "gateway": s.gateway} for s in rec.subnets],
            "driver": rec.driver,
            "mtu": rec.mtu,
            "vxlan_port": rec.vxlan_port,
            "labels": dict(rec.labels),
            "internal": rec.internal,
            "attachable": rec.attachable,
            "creator": rec.creator,
            "created": rec.created,
        }
    )


def decode_network(value: bytes) -> NetworkRecord:
    """Parse a ``networks`` table value; ``DecodeError`` if it is malformed."""
    what = "network record"
    obj = _load(value, what)
    subnets = []
    raw = obj.get("subnets", [])
    if not isinstance(raw, list):
        raise DecodeError(f"{what}: subnets must be a list")
    for s in raw:
        if not isinstance(s, dict):
            raise DecodeError(f"{what}: a subnet must be an object")
        try:
            net = ipaddress.ip_network(s.get("subnet"), strict=True)
        except (ValueError, TypeError):
            raise DecodeError(f"{what}: bad subnet {s.get('subnet')!r}") from None
        gw = _ip(s.get("gateway"), what, net.version)
        if ipaddress.ip_address(gw) not in net:
            raise DecodeError(f"{what}: gateway {gw} is outside {net}")
        subnets.append(SubnetRecord(str(net), gw))
    labels = obj.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise DecodeError(f"{what}: labels must map strings to strings")
    created = obj.get("created", 0.0)
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise DecodeError(f"{what}: created must be a number")
    return NetworkRecord(
        id=_str(obj, "id", what),
        name=_str(obj, "name", what),
        vni=_int(obj, "vni", what, 1, 2**24 - 1),
        subnets=tuple(subnets),
        driver=_str(obj, "driver", what, default="overlay"),
        mtu=_int(obj, "mtu", what, 0, 65535, default=0),
        vxlan_port=_int(obj, "vxlan_port", what, 1, 65535, default=4789),
        labels=dict(labels),
        internal=_bool(obj, "internal", what, False),
        attachable=_bool(obj, "attachable", what, True),
        creator=_str(obj, "creator", what, default="", empty=True),
        created=float(created),
    )


def encode_endpoint(rec: EndpointRecord) -> bytes:
    """The ``endpoint_table`` value of ``rec``."""
    return _dump(
        {
            "id": rec.id,
            "name": rec.name,
            "network": rec.network,
            "host": rec.host,
            "vtep": rec.vtep,
            "mac": rec.mac,
            "ipv4": rec.ipv4,
            "ipv6": rec.ipv6,
            "aliases": list(rec.aliases),
            "sandbox": rec.sandbox,
            "service": rec.service,
        }
    )


def decode_endpoint(value: bytes) -> EndpointRecord:
    """Parse an ``endpoint_table`` value; ``DecodeError`` if it is malformed."""
    what = "endpoint record"
    obj = _load(value, what)
    mac = _str(obj, "mac", what).lower()
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise DecodeError(f"{what}: bad MAC {mac!r}")
    aliases = obj.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise DecodeError(f"{what}: aliases must be a list of non-empty strings")
    ipv4 = obj.get("ipv4")
    ipv6 = obj.get("ipv6")
    return EndpointRecord(
        id=_str(obj, "id", what),
        name=_str(obj, "name", what),
        network=_str(obj, "network", what),
        host=_str(obj, "host", what),
        vtep=_ip(obj.get("vtep"), what),
        mac=mac,
        ipv4=None if ipv4 is None else _ip(ipv4, what, 4),
        ipv6=None if ipv6 is None else _ip(ipv6, what, 6),
        aliases=tuple(aliases),
        sandbox=_str(obj, "sandbox", what, default="", empty=True),
        service=_str(obj, "service", what, default="", empty=True),
    )


def mac_from_ip(ip: str) -> str:
    """libnetwork's MAC for an IPv4 endpoint: ``02:42`` then the four address bytes."""
    packed = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)
