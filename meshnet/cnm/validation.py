"""Request validation for the CNM controller (pure): typed field checks, subnet/gateway parsing, API bodies.

Theory of operation. Everything here checks *local* input (an API request) and either returns the value
in its canonical form or raises ``InvalidRequest`` naming the field and what it must be; nothing here
reads controller state, so a refusal never changes anything. The controller's operation modules
(``network_ops``, ``endpoint_ops``, ``sandbox_ops``) call these before they build any step. Checks that
need the state (name conflicts, lookups) live with the state (``state``) or the operation.
``request_fields`` turns an API JSON object into keyword arguments, refusing unknown and missing fields.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest
from .records import mac_from_ip

__all__ = [
    "MIN_VXLAN_PORT",
    "MAX_VXLAN_PORT",
    "NAME",
    "ALIAS",
    "NETNS_MAX",
    "need_str",
    "need_bool",
    "need_int",
    "need_name",
    "strip_prefix",
    "mac_for",
    "parse_subnets",
    "parse_gateway",
    "request_fields",
]

#: libnetwork's allowed data-path ports (overlayutils), 4789 included.
MIN_VXLAN_PORT = 1024
MAX_VXLAN_PORT = 49151

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ALIAS = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)
NETNS_MAX = 64


def need_str(value: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidRequest(f"{what} must be a {'' if allow_empty else 'non-empty '}string")
    return value


def need_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be true or false")
    return value


def need_int(value: object, what: str, low: int, high: int, *, zero_ok: bool = False) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not (low <= value <= high or (zero_ok and value == 0))
    ):
        extra = " (or 0 for the default)" if zero_ok else ""
        raise InvalidRequest(f"{what} must be an integer in {low}..{high}{extra}")
    return value


def need_name(value: object, what: str) -> str:
    name = need_str(value, what)
    if NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"{what} {name!r} must start with a letter or digit and hold at most 64 letters, digits, '_', '.' or '-'"
        )
    return name


def strip_prefix(address: Any) -> str:
    if not isinstance(address, str):
        raise InvalidRequest(f"IPAM returned {address!r}, not an address")
    return str(ipaddress.ip_address(address.split("/", 1)[0]))


def mac_for(ipv4: str | None, ipv6: str | None) -> str:
    """libnetwork's MAC from the IPv4 address; an IPv6-only endpoint uses the low 32 bits of its address."""
    if ipv4 is not None:
        return mac_from_ip(ipv4)
    assert ipv6 is not None
    low = int(ipaddress.IPv6Address(ipv6)) & 0xFFFFFFFF
    return mac_from_ip(str(ipaddress.IPv4Address(low)))


def parse_subnets(subnet: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if subnet is None:
        return []
    raw = [subnet] if isinstance(subnet, str) else subnet
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise InvalidRequest("subnet must be a CIDR string or a list of them")
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for s in raw:
        try:
            net = ipaddress.ip_network(s, strict=True)
        except ValueError:
            try:
                fixed = ipaddress.ip_network(s, strict=False)
            except ValueError:
                raise InvalidRequest(f"subnet {s!r} is not a CIDR like 10.0.1.0/24") from None
            raise InvalidRequest(f"subnet {s!r} has host bits set; did you mean {fixed}?") from None
        if net.num_addresses < 4:
            raise InvalidRequest(f"subnet {net} is too small (at least /30 or /126)")
        for other in nets:
            if net.overlaps(other):
                raise InvalidRequest(f"subnets {other} and {net} overlap")
        nets.append(net)
    return nets


def parse_gateway(
    gateway: object, subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str | None:
    if gateway is None:
        return None
    text = need_str(gateway, "gateway")
    try:
        gw = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidRequest(f"gateway {text!r} is not an IP address") from None
    home = [n for n in subnets if gw in n]
    if not home:
        raise InvalidRequest(f"gateway {gw} is in no subnet given (a gateway needs its subnet)")
    net = home[0]
    if gw == net.network_address or (net.version == 4 and gw == net.broadcast_address):
        raise InvalidRequest(f"gateway {gw} is the network or broadcast address of {net}")
    return str(gw)


def request_fields(
    body: Mapping[str, Any], allowed: set[str], what: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``body`` as keyword arguments: refuses a non-object, unknown fields and missing required ones."""
    if not isinstance(body, Mapping):
        raise InvalidRequest(f"the {what} request must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(unknown)} in the {what} request (known: {', '.join(sorted(allowed))})"
        )
    missing = [k for k in required if body.get(k) is None]
    if missing:
        raise InvalidRequest(f"the {what} request needs {', '.join(repr(k) for k in missing)}")
    return dict(body)
