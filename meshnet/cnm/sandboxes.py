"""Local sandboxes (a container's namespace on this host) and their file, ``STATE_DIR/sandboxes.json``.

Sandboxes are local to a host: nothing about them is replicated except the ``sandbox`` field of the
endpoint records joined to them. The ``cnm`` service keeps them in ``sandboxes.json`` so a restarted agent
adopts them (and their namespaces, and the interface names inside them) without disturbing anything.

The file also keeps a copy of the records of the joined endpoints and of their networks (``endpoints``,
``networks``: the NetworkDB JSON of each). A restarted agent describes its own overlay from them until
the tables have synced, so nothing local is torn down while the network record (written by another
host) is still on its way. The copies never override what the tables say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from meshnet.dataplane.ops import valid_netns

from .errors import BadSandboxState
from .records import (
    EndpointRecord,
    NetworkRecord,
    decode_endpoint,
    decode_network,
    encode_endpoint,
    encode_network,
)

__all__ = [
    "Sandbox",
    "SandboxState",
    "encode_sandboxes",
    "decode_sandboxes",
    "decode_sandbox_state",
    "SANDBOXES_FILE",
]

#: The file name under the agent's state directory.
SANDBOXES_FILE = "sandboxes.json"


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A sandbox on this host.

    ``netns`` is ``{prefix}sb-{name}`` when meshnet created it (``managed``), else the path handed in.
    ``interfaces`` are the joined endpoints, ``(endpoint id, interface name)`` in join order; a name is
    chosen at join (the lowest free ``ethN``) and kept until that endpoint leaves.
    """

    id: str
    name: str
    netns: str
    managed: bool = True
    created: float = 0.0
    interfaces: tuple[tuple[str, str], ...] = ()

    def endpoints(self) -> tuple[str, ...]:
        """Joined endpoint ids in join order."""
        return tuple(ep for ep, _ in self.interfaces)

    def ifname_of(self, endpoint_id: str) -> str | None:
        for ep, ifname in self.interfaces:
            if ep == endpoint_id:
                return ifname
        return None

    def next_ifname(self) -> str:
        """The lowest ``ethN`` no joined endpoint uses."""
        used = {ifname for _, ifname in self.interfaces}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"

    def joined(self, endpoint_id: str, ifname: str) -> Sandbox:
        return replace(self, interfaces=(*self.interfaces, (endpoint_id, ifname)))

    def left(self, endpoint_id: str) -> Sandbox:
        return replace(self, interfaces=tuple(i for i in self.interfaces if i[0] != endpoint_id))

    def to_json(self) -> dict[str, Any]:
        """The API's and the file's object (``endpoints``: ``[{endpoint, interface}]`` in join order)."""
        return {
            "id": self.id,
            "name": self.name,
            "netns": self.netns,
            "managed": self.managed,
            "created": self.created,
            "endpoints": [{"endpoint": ep, "interface": ifname} for ep, ifname in self.interfaces],
        }


@dataclass(frozen=True, slots=True)
class SandboxState:
    """Everything ``sandboxes.json`` holds: the sandboxes and the record copies (module docstring)."""

    sandboxes: tuple[Sandbox, ...] = ()
    networks: tuple[NetworkRecord, ...] = ()
    endpoints: tuple[EndpointRecord, ...] = ()


def encode_sandboxes(
    sandboxes: list[Sandbox] | tuple[Sandbox, ...],
    networks: list[NetworkRecord] | tuple[NetworkRecord, ...] = (),
    endpoints: list[EndpointRecord] | tuple[EndpointRecord, ...] = (),
) -> bytes:
    """The file's bytes: ``{"version": 1, "sandboxes": [...], "networks": [...], "endpoints": [...]}``,
    each sorted by id, stable."""
    body = {
        "version": 1,
        "sandboxes": [sb.to_json() for sb in sorted(sandboxes, key=lambda s: s.id)],
        "networks": [json.loads(encode_network(n)) for n in sorted(networks, key=lambda n: n.id)],
        "endpoints": [json.loads(encode_endpoint(e)) for e in sorted(endpoints, key=lambda e: e.id)],
    }
    return json.dumps(body, sort_keys=True, indent=1).encode() + b"\n"


def decode_sandbox_state(data: bytes) -> SandboxState:
    """The whole file; ``BadSandboxState`` names what is wrong (the caller adds the path)."""
    sandboxes = decode_sandboxes(data)
    body = json.loads(data)
    networks, endpoints = [], []
    for key, decode, out in (
        ("networks", decode_network, networks),
        ("endpoints", decode_endpoint, endpoints),
    ):
        raw = body.get(key, [])
        if not isinstance(raw, list):
            raise BadSandboxState(f"{key} must be a list")
        for i, obj in enumerate(raw):
            try:
                out.append(decode(json.dumps(obj).encode()))
            except ValueError as exc:
                raise BadSandboxState(f"{key}[{i}]: {exc}") from None
    return SandboxState(tuple(sandboxes), tuple(networks), tuple(endpoints))


def decode_sandboxes(data: bytes) -> list[Sandbox]:
    """Parse the file; ``BadSandboxState`` names what is wrong (the caller adds the path)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadSandboxState(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("version") != 1 or not isinstance(body.get("sandboxes"), list):
        raise BadSandboxState('expected {"version": 1, "sandboxes": [...]}')
    out: list[Sandbox] = []
    seen: set[str] = set()
    for i, obj in enumerate(body["sandboxes"]):
        where = f"sandboxes[{i}]"
        if not isinstance(obj, dict):
            raise BadSandboxState(f"{where} is not an object")
        for key in ("id", "name", "netns"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise BadSandboxState(f"{where}.{key} must be a non-empty string")
        if not valid_netns(obj["netns"]):
            raise BadSandboxState(f"{where}.netns {obj['netns']!r} is not a namespace name or path")
        managed = obj.get("managed", True)
        created = obj.get("created", 0.0)
        if not isinstance(managed, bool) or not isinstance(created, int | float) or isinstance(created, bool):
            raise BadSandboxState(f"{where}: managed must be true/false and created a number")
        ifaces = []
        raw = obj.get("endpoints", [])
        if not isinstance(raw, list):
            raise BadSandboxState(f"{where}.endpoints must be a list")
        for e in raw:
            if not isinstance(e, dict) or not all(
                isinstance(e.get(k), str) for k in ("endpoint", "interface")
            ):
                raise BadSandboxState(f"{where}.endpoints: each needs endpoint and interface strings")
            ifaces.append((e["endpoint"], e["interface"]))
        if obj["id"] in seen:
            raise BadSandboxState(f"{where}: duplicate id {obj['id']}")
        seen.add(obj["id"])
        out.append(Sandbox(obj["id"], obj["name"], obj["netns"], managed, float(created), tuple(ifaces)))
    return out
