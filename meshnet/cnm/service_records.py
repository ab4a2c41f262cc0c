"""The ``service_table`` records: services (DNS round robin, SRV ports, VIPs later) and their tasks.

Theory of operation. A service lives in one network; its tasks are endpoints of that network. The
table is a per-network NetworkDB table (NetworkDB network = network id) with two kinds of keys, so
that every entry is owned by the host that knows the truth about it:

- ``svc:SERVICE_ID`` -> ``ServiceSpec`` (name, aliases, SRV ports, VIPs, the endpoints chosen as tasks),
  written by the host that created (or last changed) the service through the API;
- ``task:SERVICE_ID:ENDPOINT_ID`` -> ``TaskRecord`` (the endpoint's name and addresses, plus a copy of
  the spec), written by the *endpoint's* host, which adds it when it sees a spec that selects one of its
  local endpoints and deletes it when the endpoint or the service goes.

NetworkDB hides the entries of a failed host. A failed task host therefore hides exactly its tasks;
the service stays (its spec entry, or the spec copies in the other tasks). A failed or departed
creator does not take the service with it either: readers keep a hidden spec entry, and fall back to
the spec copied into the live tasks when the spec entry is gone without a tombstone (the creator left
gracefully, its entries were removed). Only a tombstone on ``svc:`` (``meshnetctl service rm``) ends the
service at once for every reader, before the task hosts delete their task entries. Specs carry a
``revision``; the highest one a reader holds wins (copies may lag the spec entry for one round trip).

Tasks are chosen by the spec's ``endpoints`` (endpoint ids or names on the network) or by the endpoint
record's ``service`` field (the service's name or id), libnetwork's way of making a container a task.

Format: JSON objects with sorted keys like ``records.py``; unknown fields ignored; ``decode_*`` and
``parse_key`` raise ``DecodeError`` on anything malformed (remote input: the caller counts and drops).
``ServiceBook`` folds decoded entries into what the DNS name table needs; ``wanted_tasks`` computes the
task entries a host should own. Both are pure.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshnet.core.errors import DecodeError, LocalProtocolError

from .records import EndpointRecord

__all__ = [
    "TABLE_SERVICES",
    "PortSpec",
    "ServiceSpec",
    "TaskRecord",
    "ServiceView",
    "ServiceBook",
    "service_key",
    "task_key",
    "parse_key",
    "encode_service",
    "decode_service",
    "encode_task",
    "decode_task",
    "task_from_endpoint",
    "selects",
    "wanted_tasks",
    "parse_port",
]

#: Per-network table (NetworkDB network = network id): ``svc:ID`` and ``task:ID:ENDPOINT`` keys.
TABLE_SERVICES = "service_table"
_PROTOCOLS = ("tcp", "udp", "sctp")
_MAX_LIST = 4096


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A named port for SRV: ``_NAME._PROTOCOL.SERVICE`` -> ``port`` on every task."""

    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a service is: its names, ports, VIPs and the endpoints chosen as its tasks."""

    id: str
    name: str
    network: str
    aliases: tuple[str, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    vips: tuple[str, ...] = ()
    #: Endpoint ids or names (on ``network``) that are tasks, besides endpoints whose record names the service.
    endpoints: tuple[str, ...] = ()
    creator: str = ""
    created: float = 0.0
    revision: int = 0


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task: an endpoint of the service's network, written by the endpoint's host."""

    service: str  # service id
    endpoint: str  # endpoint id
    name: str  # endpoint name (SRV targets are NAME.NETWORK)
    host: str
    ipv4: str | None = None
    ipv6: str | None = None
    spec: ServiceSpec | None = None

    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a)


def service_key(service_id: str) -> str:
    return f"svc:{service_id}"


def task_key(service_id: str, endpoint_id: str) -> str:
    return f"task:{service_id}:{endpoint_id}"


def parse_key(key: str) -> tuple[str, str, str | None]:
    """``("svc", service_id, None)`` or ``("task", service_id, endpoint_id)``; DecodeError otherwise."""
    kind, _, rest = key.partition(":")
    if kind == "svc" and rest and ":" not in rest:
        return "svc", rest, None
    if kind == "task":
        sid, _, eid = rest.partition(":")
        if sid and eid and ":" not in eid:
            return "task", sid, eid
    raise DecodeError(f"service_table: bad key {key!r}")


def parse_port(text: str) -> PortSpec:
    """``NAME:PORT/PROTO`` (the CLI's ``--port``; PROTO defaults to tcp). LocalProtocolError when bad."""
    name, sep, rest = text.partition(":")
    port_text, _, proto = rest.partition("/")
    proto = (proto or "tcp").lower()
    if not sep or not name or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise LocalProtocolError(f"port {text!r} is not NAME:PORT/PROTO (e.g. http:80/tcp)")
    if proto not in _PROTOCOLS:
        raise LocalProtocolError(f"port {text!r}: protocol must be tcp, udp or sctp")
    return PortSpec(name, proto, int(port_text))


# ---------------------------------------------------------------- codec


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _load(value: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise DecodeError(f"{what}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: not a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str, what: str, *, default: str | None = None, empty: bool = False) -> str:
    v = obj.get(key, default)
    if not isinstance(v, str) or (not v and not empty):
        raise DecodeError(f"{what}: field {key!r} must be a non-empty string")
    return v


def _strs(obj: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    v = obj.get(key, [])
    if not isinstance(v, list) or len(v) > _MAX_LIST or not all(isinstance(s, str) and s for s in v):
        raise DecodeError(f"{what}: {key} must be a list of non-empty strings")
    return tuple(v)


def _ip(v: Any, what: str, version: int | None = None) -> str:
    try:
        ip = ipaddress.ip_address(v)
    except (ValueError, TypeError):
        raise DecodeError(f"{what}: {v!r} is not an IP address") from None
    if version is not None and ip.version != version:
        raise DecodeError(f"{what}: {v!r} is not an IPv{version} address")
    return str(ip)


def _spec_json(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "name": spec.name,
        "network": spec.network,
        "aliases": list(spec.aliases),
        "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port} for p in spec.ports],
        "vips": list(spec.vips),
        "endpoints": list(spec.endpoints),
        "creator": spec.creator,
        "created": spec.created,
        "revision": spec.revision,
    }


def _spec_from(obj: dict[str, Any], what: str) -> ServiceSpec:
    ports = []
    raw = obj.get("ports", [])
    if not isinstance(raw, list) or len(raw) > _MAX_LIST:
        raise DecodeError(f"{what}: ports must be a list")
    for p in raw:
        if not isinstance(p, dict):
            raise DecodeError(f"{what}: a port must be an object")
        port = p.get("port")
        proto = p.get("protocol", "tcp")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise DecodeError(f"{what}: port must be an integer in 0..65535")
        if proto not in _PROTOCOLS:
            raise DecodeError(f"{what}: port protocol must be tcp, udp or sctp")
        ports.append(PortSpec(_str(p, "name", what), proto, port))
    created = obj.get("created", 0.0)
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise DecodeError(f"{what}: created must be a number")
    revision = obj.get("revision", 0)
    if not isinstance(revision, int) or isinstance(revision, bool) or not 0 <= revision < 2**63:
        raise DecodeError(f"{what}: revision must be a non-negative integer")
    return ServiceSpec(
        id=_str(obj, "id", what),
        name=_str(obj, "name", what),
        network=_str(obj, "network", what),
        aliases=_strs(obj, "aliases", what),
        ports=tuple(ports),
        vips=tuple(_ip(v, what) for v in _strs(obj, "vips", what)),
        endpoints=_strs(obj, "endpoints", what),
        creator=_str(obj, "creator", what, default="", empty=True),
        created=float(created),
        revision=revision,
    )


def encode_service(spec: ServiceSpec) -> bytes:
    """The ``svc:ID`` value of ``spec``."""
    return _dump(_spec_json(spec))


def decode_service(value: bytes) -> ServiceSpec:
    """Parse a ``svc:ID`` value; ``DecodeError`` if it is malformed."""
    return _spec_from(_load(value, "service record"), "service record")


def encode_task(task: TaskRecord) -> bytes:
    """The ``task:ID:ENDPOINT`` value of ``task``."""
    return _dump(
        {
            "service": task.service,
            "endpoint": task.endpoint,
            "name": task.name,
            "host": task.host,
            "ipv4": task.ipv4,
            "ipv6": task.ipv6,
            "spec": None if task.spec is None else _spec_json(task.spec),
        }
    )


def decode_task(value: bytes) -> TaskRecord:
    """Parse a ``task:ID:ENDPOINT`` value; ``DecodeError`` if it is malformed."""
    what = "task record"
    obj = _load(value, what)
    spec_obj = obj.get("spec")
    if spec_obj is not None and not isinstance(spec_obj, dict):
        raise DecodeError(f"{what}: spec must be an object")
    ipv4, ipv6 = obj.get("ipv4"), obj.get("ipv6")
    task = TaskRecord(
        service=_str(obj, "service", what),
        endpoint=_str(obj, "endpoint", what),
        name=_str(obj, "name", what),
        host=_str(obj, "host", what),
        ipv4=None if ipv4 is None else _ip(ipv4, what, 4),
        ipv6=None if ipv6 is None else _ip(ipv6, what, 6),
        spec=None if spec_obj is None else _spec_from(spec_obj, what),
    )
    if task.spec is not None and task.spec.id != task.service:
        raise DecodeError(f"{what}: spec id {task.spec.id!r} is not the task's service {task.service!r}")
    return task


# ---------------------------------------------------------------- tasks a host owns


def selects(spec: ServiceSpec, ep: EndpointRecord) -> bool:
    """Whether ``ep`` is a task of ``spec`` (same network; chosen by id or name, or naming the service)."""
    if ep.network != spec.network:
        return False
    if ep.id in spec.endpoints or ep.name in spec.endpoints:
        return True
    return bool(ep.service) and ep.service in (spec.name, spec.id)


def task_from_endpoint(spec: ServiceSpec, ep: EndpointRecord) -> TaskRecord:
    """The task entry ``ep``'s host writes for ``spec``."""
    return TaskRecord(spec.id, ep.id, ep.name, ep.host, ep.ipv4, ep.ipv6, spec)


def wanted_tasks(specs: Iterable[ServiceSpec], local_endpoints: Iterable[EndpointRecord]) -> dict[str, bytes]:
    """key -> encoded value of every task entry a host should own: one per (live spec, selected local
    endpoint). The caller diffs it against the task entries it owns (put the new/changed, delete the rest)."""
    eps = list(local_endpoints)
    out: dict[str, bytes] = {}
    for spec in specs:
        for ep in eps:
            if selects(spec, ep):
                out[task_key(spec.id, ep.id)] = encode_task(task_from_endpoint(spec, ep))
    return out


# ---------------------------------------------------------------- the reader's fold


@dataclass(frozen=True, slots=True)
class ServiceView:
    """A service as a reader sees it: the winning spec and the visible tasks (sorted by endpoint id)."""

    spec: ServiceSpec
    tasks: tuple[TaskRecord, ...]


@dataclass(slots=True)
class _Slot:
    spec: ServiceSpec | None = None
    state: str = "absent"  # "live", "hidden" (owner failed), "deleted" (tombstone), "absent"
    tasks: dict[str, TaskRecord] = field(default_factory=dict)


class ServiceBook:
    """Services per network as folded from ``service_table`` entries (module docstring for the rules).

    Feed it with ``put_spec``/``spec_gone`` and ``put_task``/``remove_task``; each returns the network's
    service id whose view may have changed. ``view(network, sid)`` is the current ``ServiceView`` or None
    (no service: tombstoned, or neither a spec nor a task carrying one).
    """

    def __init__(self) -> None:
        self._nets: dict[str, dict[str, _Slot]] = {}

    def _slot(self, network: str, sid: str) -> _Slot:
        return self._nets.setdefault(network, {}).setdefault(sid, _Slot())

    def put_spec(self, network: str, spec: ServiceSpec, *, hidden: bool = False) -> str:
        slot = self._slot(network, spec.id)
        slot.spec, slot.state = spec, "hidden" if hidden else "live"
        return spec.id

    def spec_gone(self, network: str, sid: str, *, tombstone: bool) -> str:
        """The ``svc:`` entry left the view: ``tombstone`` when deleted, else removed without one."""
        slot = self._slot(network, sid)
        slot.state = "deleted" if tombstone else "absent"
        if not tombstone:
            slot.spec = None
        self._gc(network, sid)
        return sid

    def put_task(self, network: str, task: TaskRecord) -> str:
        self._slot(network, task.service).tasks[task.endpoint] = task
        return task.service

    def remove_task(self, network: str, sid: str, endpoint_id: str) -> str:
        nets = self._nets.get(network)
        slot = nets.get(sid) if nets is not None else None
        if slot is not None:
            slot.tasks.pop(endpoint_id, None)
            self._gc(network, sid)
        return sid

    def remove_network(self, network: str) -> list[str]:
        """Forget a network; the service ids it held."""
        return list(self._nets.pop(network, {}))

    def _gc(self, network: str, sid: str) -> None:
        slot = self._nets[network][sid]
        if slot.state == "absent" and not slot.tasks:
            del self._nets[network][sid]
            if not self._nets[network]:
                del self._nets[network]

    def view(self, network: str, sid: str) -> ServiceView | None:
        slot = self._nets.get(network, {}).get(sid)
        if slot is None or slot.state == "deleted":
            return None
        candidates = [t.spec for t in slot.tasks.values() if t.spec is not None]
        if slot.spec is not None:
            candidates.append(slot.spec)
        if not candidates:
            return None
        spec = max(candidates, key=lambda s: (s.revision, s == slot.spec))
        tasks = tuple(slot.tasks[e] for e in sorted(slot.tasks))
        return ServiceView(spec, tasks)

    def is_tombstoned(self, network: str, sid: str) -> bool:
        slot = self._nets.get(network, {}).get(sid)
        return slot is not None and slot.state == "deleted"

    def views(self, network: str | None = None) -> list[ServiceView]:
        """Every current service (of one network or all), sorted by network, name, id."""
        out = []
        for net in [network] if network is not None else sorted(self._nets):
            for sid in self._nets.get(net, {}):
                v = self.view(net, sid)
                if v is not None:
                    out.append(v)
        return sorted(out, key=lambda v: (v.spec.network, v.spec.name, v.spec.id))

    def live_specs(self, network: str) -> list[ServiceSpec]:
        """Specs that select tasks now (their ``svc:`` entry live or hidden, or carried by tasks)."""
        return [v.spec for v in self.views(network)]
