"""The CNM service's local values: sandboxes and their endpoints, kernel names, and ``sandboxes.json``.

Theory of operation. Networks and endpoints are cluster-wide and live in NetworkDB
(``meshnet/cnm/records.py``); a *sandbox* (a container's network namespace) is local to one host and
lives here, in ``STATE_DIR/sandboxes.json``, so that a restarted agent adopts its sandboxes and the
kernel objects it made for them without touching them. Each joined endpoint is stored with the overlay
parameters it was joined with (VNI, subnets, MTU, VXLAN port), so the local half of the overlay
(namespace, bridge, VXLAN device, veths, addresses) can be rebuilt from this file alone, before the
tables have synced after a restart.

Values are frozen; ``SandboxInfo``/``SandboxEndpoint`` are also what other services read
(``CnmService.sandboxes()``, the DNS service). Kernel names are ``meshnet.overlay``'s (docs/agent-services.md section 3).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SandboxEndpoint",
    "SandboxInfo",
    "netns_path",
    "SANDBOXES_FILE",
    "load_sandboxes",
    "save_sandboxes",
    "valid_name",
    "NAME_RULE",
]

SANDBOXES_FILE = "sandboxes.json"
_FORMAT = 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")
NAME_RULE = "1-48 characters of letters, digits, '_', '.', '-', starting with a letter or digit"


def valid_name(name: object) -> bool:
    """Whether ``name`` is a usable network, endpoint or sandbox name (``NAME_RULE``)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def netns_path(netns: str) -> str:
    """An absolute path for a namespace given as ops take it (a name under /run/netns, or a path)."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


@dataclass(frozen=True, slots=True)
class SandboxEndpoint:
    """An endpoint joined to a local sandbox, with what the overlay needs to rebuild it after a restart."""

    id: str
    name: str
    network: str  # network id
    network_name: str
    ifname: str  # eth0, eth1, ... inside the sandbox
    mac: str
    ipv4: str | None = None
    ipv6: str | None = None
    aliases: tuple[str, ...] = ()
    service: str = ""
    vni: int = 0
    #: (subnet, gateway) pairs of the network, canonical.
    subnets: tuple[tuple[str, str], ...] = ()
    #: The overlay MTU on this host (bridge, VXLAN device, veths).
    mtu: int = 1450
    vxlan_port: int = 4789

    def cidrs(self) -> tuple[str, ...]:
        """The endpoint's addresses with their subnet's prefix length (``10.0.1.5/24``)."""
        out = []
        for ip in (self.ipv4, self.ipv6):
            if not ip:
                continue
            addr = ipaddress.ip_address(ip)
            for subnet, _gw in self.subnets:
                net = ipaddress.ip_network(subnet)
                if addr.version == net.version and addr in net:
                    out.append(f"{ip}/{net.prefixlen}")
                    break
            else:
                out.append(f"{ip}/{32 if addr.version == 4 else 128}")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """A local sandbox: ``netns`` as ops take it (``{prefix}sb-NAME`` or the path handed in),
    ``netns_path`` always absolute, ``created`` True when meshnet made (and will remove) the namespace."""

    id: str
    name: str
    netns: str
    netns_path: str
    created: bool
    endpoints: tuple[SandboxEndpoint, ...] = field(default=())

    def endpoint(self, endpoint_id: str) -> SandboxEndpoint | None:
        for ep in self.endpoints:
            if ep.id == endpoint_id:
                return ep
        return None

    def next_ifname(self) -> str:
        """The lowest ``ethN`` not in use in this sandbox."""
        used = {ep.ifname for ep in self.endpoints}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"


def _ep_json(ep: SandboxEndpoint) -> dict[str, Any]:
    return {
        "id": ep.id,
        "name": ep.name,
        "network": ep.network,
        "network_name": ep.network_name,
        "ifname": ep.ifname,
        "mac": ep.mac,
        "ipv4": ep.ipv4,
        "ipv6": ep.ipv6,
        "aliases": list(ep.aliases),
        "service": ep.service,
        "vni": ep.vni,
        "subnets": [list(s) for s in ep.subnets],
        "mtu": ep.mtu,
        "vxlan_port": ep.vxlan_port,
    }


def _ep_from(obj: dict[str, Any]) -> SandboxEndpoint:
    return SandboxEndpoint(
        id=str(obj["id"]),
        name=str(obj["name"]),
        network=str(obj["network"]),
        network_name=str(obj.get("network_name", "")),
        ifname=str(obj["ifname"]),
        mac=str(obj["mac"]),
        ipv4=obj.get("ipv4"),
        ipv6=obj.get("ipv6"),
        aliases=tuple(obj.get("aliases", ())),
        service=str(obj.get("service", "")),
        vni=int(obj["vni"]),
        subnets=tuple((str(s), str(g)) for s, g in obj.get("subnets", ())),
        mtu=int(obj["mtu"]),
        vxlan_port=int(obj.get("vxlan_port", 4789)),
    )


def sandbox_json(sb: SandboxInfo) -> dict[str, Any]:
    return {
        "id": sb.id,
        "name": sb.name,
        "netns": sb.netns,
        "created": sb.created,
        "endpoints": [_ep_json(ep) for ep in sb.endpoints],
    }


def load_sandboxes(state_dir: str | None) -> dict[str, SandboxInfo]:
    """The sandboxes saved in ``state_dir`` (empty if none). Raises ValueError naming the file when it is
    damaged (the agent then refuses to start rather than forget live containers)."""
    if state_dir is None:
        return {}
    path = os.path.join(state_dir, SANDBOXES_FILE)
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; fix or remove it") from None
    try:
        if data.get("format") != _FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        out = {}
        for obj in data["sandboxes"]:
            sb = SandboxInfo(
                id=str(obj["id"]),
                name=str(obj["name"]),
                netns=str(obj["netns"]),
                netns_path=netns_path(str(obj["netns"])),
                created=bool(obj["created"]),
                endpoints=tuple(_ep_from(e) for e in obj.get("endpoints", ())),
            )
            out[sb.id] = sb
        return out
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); fix or remove it") from None


def save_sandboxes(state_dir: str | None, sandboxes: Iterable[SandboxInfo]) -> None:
    """Replace ``sandboxes.json`` atomically (temporary file, fsync, rename, fsync the directory).
    Raises OSError."""
    if state_dir is None:
        return
    body = {
        "format": _FORMAT,
        "sandboxes": [sandbox_json(sb) for sb in sorted(sandboxes, key=lambda s: s.id)],
    }
    data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    tmp = os.path.join(state_dir, SANDBOXES_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(state_dir, SANDBOXES_FILE))
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    with contextlib.suppress(OSError):
        os.fsync(dfd)
    os.close(dfd)
