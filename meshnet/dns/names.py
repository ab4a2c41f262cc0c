"""``NameTable``: the cluster's DNS names, per network, and the scoped lookups a sandbox's resolver asks.

Theory of operation. House rules (style.md 3.3): a pure value store, no I/O, clock, threads or global
randomness. It is fed by values, not by NetworkDB: the wiring turns watch events of the endpoint and
service tables into ``upsert_*``/``remove_*`` calls, and a network's name and subnets into
``upsert_network``. Every update is incremental: it re-indexes only the changed record (O(k) for a
record with k names and addresses), never the table. Each network carries a generation counter that
every change bumps, so a resolver can keep rendered answers until a network in its scope changes.

What a network holds (libnetwork.md 5.6 and 6, the naming rules this module keeps):

- endpoints: a container's name and aliases -> its addresses (A for IPv4, AAAA for IPv6; a network has
  IPv6 exactly when its endpoints carry IPv6 addresses); PTR for each address -> ``NAME.NETWORK``
  (primary name only, as Docker does);
- services: the name and aliases -> the VIPs when set, else every task address (DNS round robin);
  ``tasks.NAME`` -> every task address, always; each task's name -> its addresses (so SRV targets
  resolve); ``_PORT._PROTO.NAME`` -> SRV, one per task (priority 0, weight 0, target
  ``TASK.NETWORK``), with the tasks' addresses as additional records; PTR for VIPs -> ``NAME.NETWORK``
  and for task addresses -> ``TASK.NETWORK``.

Several records may claim one name (an alias shared by containers, a service and its containers):
their addresses are merged and deduplicated. Names are case-insensitive (ASCII, RFC 4343); names that
are not printable ASCII DNS names are skipped and counted in ``invalid_names`` instead of failing the
record, because the record came from a remote node.

Scoped lookup (``resolve``). A sandbox sees only the networks it is attached to, given as an ordered
scope. For ``a.b.c``: the whole name in every scoped network, else ``a.b`` in the scoped network
named ``c``, else ``a`` in the one named ``b.c`` (libnetwork's order); the first network that has the
name answers, in scope order. Which names are *cluster names*, answered here and never sent upstream:

1. every name that has a record in scope (dotted aliases, ``tasks.X``, SRV names included);
2. every single-label name (``web``), so a typo or a removed container is an authoritative NXDOMAIN
   and never leaks; the client then tries its search domains, which are forwarded. Exception: zone
   infrastructure types (NS, SOA, DS, DNSKEY, ...) for a single label that has no record are forwarded,
   so DNSSEC validators and ``dig com NS`` behind the resolver keep working;
3. every name equal to or under a scoped network's name (``x.frontend`` on network ``frontend``);
4. reverse names (in-addr.arpa, ip6.arpa) inside a scoped network's subnet, and any address a scoped
   record carries. A full address without a record is NXDOMAIN; a partial reverse name inside a
   subnet is NODATA (names exist below it);
5. ``localhost`` (RFC 6761 6.3): 127.0.0.1 and ::1;
6. names equal to or under *any* declared network's name, and reverse names inside any declared
   network's subnet, even outside the sandbox's scope: NXDOMAIN (or NODATA for a partial reverse name),
   never an answer (the scope holds) and never a forward (the cluster's names do not leak upstream).

Everything else is ``FORWARD``: the resolver sends it to the upstream servers.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple, NewType

from meshnet.core.errors import LocalProtocolError

__all__ = [
    "NetworkId",
    "IPAddress",
    "NetworkInfo",
    "EndpointRecord",
    "ServicePort",
    "ServiceTask",
    "ServiceRecord",
    "Srv",
    "Rr",
    "Status",
    "Resolution",
    "NameTable",
    "normalize_name",
    "parse_reverse_name",
    "A",
    "PTR",
    "AAAA",
    "SRV",
    "ANY",
]

NetworkId = NewType("NetworkId", str)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RR types this module answers (RFC 1035 3.2.2, RFC 3596, RFC 2782, RFC 8482 for ANY).
A, NS, SOA, PTR, AAAA, SRV, ANY = 1, 2, 6, 12, 28, 33, 255
# Zone infrastructure types: for a single label without a record they go upstream (rule 2 above).
INFRA_TYPES = frozenset(
    {NS, SOA, 39, 43, 46, 47, 48, 50, 51, 59, 60}
)  # DNAME DS RRSIG NSEC DNSKEY NSEC3(PARAM) CDS CDNSKEY
SRV_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})
_LOCALHOST = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


def normalize_name(name: str) -> str | None:
    """``name`` lower-cased without a trailing dot, or None when it is no valid DNS name.

    Valid: printable ASCII without spaces, labels of 1-63 characters, at most 253 characters in all
    (255 octets on the wire, RFC 1035 2.3.4).
    """
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not name.isascii() or not name.isprintable() or " " in name:
        return None
    if any(not label or len(label) > 63 for label in name.split(".")):
        return None
    return name.lower()


def _address(value: object) -> IPAddress:
    try:
        return ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {value!r}") from exc


def _addresses(values: Iterable[object]) -> tuple[IPAddress, ...]:
    return tuple(_address(v) for v in values)


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """A network's DNS identity: ``name`` (for ``NAME.NETWORK``) and ``subnets`` (its reverse zones)."""

    network_id: str
    name: str
    subnets: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        try:
            subnets = tuple(ipaddress.ip_network(s) for s in self.subnets)
        except ValueError as exc:
            raise LocalProtocolError(f"network {self.network_id}: bad subnet: {exc}") from exc
        object.__setattr__(self, "subnets", subnets)


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """A container's attachment to one network: its name, aliases and addresses (str or ip objects)."""

    endpoint_id: str
    name: str
    addresses: tuple[IPAddress, ...]
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", _addresses(self.addresses))
        object.__setattr__(self, "aliases", tuple(self.aliases))


@dataclass(frozen=True, slots=True)
class ServicePort:
    """A named service port for SRV: ``_NAME._PROTOCOL.SERVICE`` answers ``port`` on every task."""

    name: str
    protocol: str
    port: int

    def __post_init__(self) -> None:
        if self.protocol.lower() not in SRV_PROTOCOLS:
            raise LocalProtocolError(f"service port {self.name}: protocol must be tcp, udp or sctp")
        if not 0 <= self.port <= 65535:
            raise LocalProtocolError(f"service port {self.name}: port {self.port} not in 0-65535")
        object.__setattr__(self, "protocol", self.protocol.lower())


@dataclass(frozen=True, slots=True)
class ServiceTask:
    """One task (container) of a service: its name and addresses on this network."""

    name: str
    addresses: tuple[IPAddress, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", _addresses(self.addresses))


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """A service on one network: name, aliases, optional VIPs, its tasks and its SRV ports."""

    service_id: str
    name: str
    vips: tuple[IPAddress, ...] = ()
    tasks: tuple[ServiceTask, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "vips", _addresses(self.vips))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "aliases", tuple(self.aliases))


class Srv(NamedTuple):
    """SRV rdata (RFC 2782); ``target`` is a normalized name without the trailing dot."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Rr:
    """One resource record of an answer, class IN.

    ``owner`` is None in the answer section (the owner is the query's name, with the query's case) and a
    normalized name in the additional section. ``value`` is an address (A/AAAA), a name (PTR) or ``Srv``.
    ``is_stable`` marks records that live as long as a service (VIPs, localhost): the resolver may give
    them a longer TTL.
    """

    rtype: int
    value: IPAddress | str | Srv
    owner: str | None = None
    is_stable: bool = False


class Status(Enum):
    """What the table says about a query."""

    ANSWER = "answer"  # records in ``Resolution.answer``
    NODATA = "nodata"  # the name exists, no records of that type (NOERROR, empty)
    NXDOMAIN = "nxdomain"  # a cluster name that does not exist (authoritative)
    FORWARD = "forward"  # not a cluster name: ask the upstream servers


@dataclass(frozen=True, slots=True)
class Resolution:
    """The table's answer to (name, type, scope); records unordered (the resolver shuffles)."""

    status: Status
    answer: tuple[Rr, ...] = ()
    additional: tuple[Rr, ...] = ()


_FORWARD = Resolution(Status.FORWARD)
_NXDOMAIN = Resolution(Status.NXDOMAIN)
_NODATA = Resolution(Status.NODATA)

# Index references: (kind, key, role, index). kind "e" endpoint, "s" service; role "name" (endpoint name or
# alias), "svc" (service name or alias), "tasks" (tasks.NAME), "task" (task ``index``), "srv" (port ``index``).
_Ref = tuple[str, str, str, int]


@dataclass(slots=True)
class _Net:
    network_id: str
    name: str | None = None
    subnets: tuple[IPNetwork, ...] = ()
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    names: dict[str, dict[_Ref, None]] = field(default_factory=dict)
    ptrs: dict[IPAddress, dict[_Ref, None]] = field(default_factory=dict)
    generation: int = 0


def parse_reverse_name(name: str) -> tuple[int, int, int] | None:
    """(IP version, prefix value, prefix bits) of an in-addr.arpa / ip6.arpa name, or None.

    ``4.3.2.1.in-addr.arpa`` is (4, 0x01020304, 32); ``2.1.in-addr.arpa`` is (4, 0x0102, 16). Labels must be
    decimal octets without leading zeros (IPv4) or single hex nibbles (IPv6).
    """
    if name.endswith("in-addr.arpa"):
        head, version, per_label, max_labels = name[: -len("in-addr.arpa")], 4, 8, 4
    elif name.endswith("ip6.arpa"):
        head, version, per_label, max_labels = name[: -len("ip6.arpa")], 6, 4, 32
    else:
        return None
    if head and not head.endswith("."):
        return None
    labels = head[:-1].split(".") if head else []
    if len(labels) > max_labels:
        return None
    value = 0
    for label in reversed(labels):
        if version == 4:
            if not label.isdigit() or not label.isascii() or (len(label) > 1 and label[0] == "0"):
                return None
            digit = int(label)
            if digit > 255:
                return None
        else:
            if len(label) != 1 or label not in "0123456789abcdef":
                return None
            digit = int(label, 16)
        value = (value << per_label) | digit
    return version, value, per_label * len(labels)


class NameTable:
    """The cluster's names per network, updated incrementally and looked up within a sandbox's scope.

    Updates (all O(k) in the size of the changed record): ``upsert_network``/``remove_network``,
    ``upsert_endpoint``/``remove_endpoint``, ``upsert_service``/``remove_service``. Records of a network
    never declared with ``upsert_network`` are kept; they resolve by name, and ``NAME.NETWORK`` and the
    reverse zone work once the network is declared. ``generation`` (whole table) and
    ``network_generation(id)`` change on every effective update. Lookups: ``resolve`` (the resolver's
    entry point) and ``addresses`` (a convenience for tests and hosts files).
    """

    def __init__(self) -> None:
        self._nets: dict[str, _Net] = {}
        self._net_names: dict[str, int] = {}  # every declared network name -> how many networks carry it
        self.generation = 0
        self.invalid_names = 0

    # ---------------------------------------------------------------- updates

    def upsert_network(self, info: NetworkInfo) -> None:
        """Declare or change a network's name and subnets."""
        net = self._net(info.network_id)
        name = normalize_name(info.name)
        if name is None:
            self.invalid_names += 1
        if (net.name, net.subnets) != (name, info.subnets):
            self._count_name(net.name, -1)
            self._count_name(name, 1)
            net.name, net.subnets = name, info.subnets
            self._bump(net)

    def _count_name(self, name: str | None, delta: int) -> None:
        if name is None:
            return
        count = self._net_names.get(name, 0) + delta
        if count > 0:
            self._net_names[name] = count
        else:
            self._net_names.pop(name, None)

    def remove_network(self, network_id: str) -> bool:
        """Forget a network with all its records; False when it was unknown."""
        net = self._nets.pop(network_id, None)
        if net is None:
            return False
        self._count_name(net.name, -1)
        self.generation += 1
        return True

    def upsert_endpoint(self, network_id: str, record: EndpointRecord) -> None:
        """Add or replace an endpoint (keyed by ``record.endpoint_id``) on ``network_id``."""
        net = self._net(network_id)
        old = net.endpoints.get(record.endpoint_id)
        if old == record:
            return
        if old is not None:
            self._index_endpoint(net, old, add=False)
        net.endpoints[record.endpoint_id] = record
        self._index_endpoint(net, record, add=True)
        self._bump(net)

    def remove_endpoint(self, network_id: str, endpoint_id: str) -> bool:
        """Remove an endpoint; False when it was unknown."""
        net = self._nets.get(network_id)
        old = net.endpoints.pop(endpoint_id, None) if net is not None else None
        if old is None:
            return False
        self._index_endpoint(net, old, add=False)
        self._bump(net)
        return True

    def upsert_service(self, network_id: str, record: ServiceRecord) -> None:
        """Add or replace a service (keyed by ``record.service_id``) on ``network_id``."""
        net = self._net(network_id)
        old = net.services.get(record.service_id)
        if old == record:
            return
        if old is not None:
            self._index_service(net, old, add=False)
        net.services[record.service_id] = record
        self._index_service(net, record, add=True)
        self._bump(net)

    def remove_service(self, network_id: str, service_id: str) -> bool:
        """Remove a service; False when it was unknown."""
        net = self._nets.get(network_id)
        old = net.services.pop(service_id, None) if net is not None else None
        if old is None:
            return False
        self._index_service(net, old, add=False)
        self._bump(net)
        return True

    def network_generation(self, network_id: str) -> int:
        """A counter that changes whenever the network's names change (-1 for an unknown network)."""
        net = self._nets.get(network_id)
        return -1 if net is None else net.generation

    # ---------------------------------------------------------------- lookups

    def resolve(self, name: str, qtype: int, scope: Sequence[str]) -> Resolution:
        """What a sandbox attached to ``scope`` (network ids, in order) gets for ``name``/``qtype``.

        ``name`` is normalized (``normalize_name``); anything else forwards. See the module docstring for
        the rules; records come unshuffled.
        """
        if not name:
            return _FORWARD
        nets = [net for net in (self._nets.get(n) for n in scope) if net is not None]
        if name.endswith(".arpa"):
            reverse = parse_reverse_name(name)
            if reverse is not None:
                return self._resolve_reverse(reverse, qtype, nets)
        if name == "localhost":
            return _records(qtype, [(addr, True) for addr in _LOCALHOST], ())
        found = self._find(name, nets)
        if found is not None:
            net, refs = found
            return self._answer(net, refs, qtype)
        if "." not in name:
            return _FORWARD if qtype in INFRA_TYPES else _NXDOMAIN
        for net in nets:
            if net.name is not None and (name == net.name or name.endswith("." + net.name)):
                return _NXDOMAIN
        if self._net_names:
            # Rule 6: a name under any network of the cluster, scoped or not, never leaks upstream.
            labels = name.split(".")
            for i in range(len(labels)):
                if ".".join(labels[i:]) in self._net_names:
                    return _NXDOMAIN
        return _FORWARD

    def addresses(
        self, name: str, scope: Sequence[str], *, version: int | None = None, rng: random.Random | None = None
    ) -> tuple[IPAddress, ...]:
        """The addresses ``name`` resolves to in ``scope`` (IPv4 then IPv6, sorted; shuffled with ``rng``)."""
        norm = normalize_name(name)
        if norm is None:
            return ()
        found = self._find(norm, [n for n in (self._nets.get(i) for i in scope) if n is not None])
        if found is None:
            return ()
        addrs = [a for a in self._collect(found[0], found[1])[0] if version is None or a.version == version]
        if rng is not None:
            rng.shuffle(addrs)
        return tuple(addrs)

    # ---------------------------------------------------------------- internals

    def _net(self, network_id: str) -> _Net:
        net = self._nets.get(network_id)
        if net is None:
            net = self._nets[network_id] = _Net(network_id)
        return net

    def _bump(self, net: _Net) -> None:
        # Generations come from one table-wide counter, so a network removed and declared again can
        # never repeat a generation a resolver has cached answers for.
        self.generation += 1
        net.generation = self.generation

    def _name(self, raw: str) -> str | None:
        name = normalize_name(raw)
        if name is None:
            self.invalid_names += 1
        return name

    def _link(self, index: dict, key: object, ref: _Ref, add: bool) -> None:
        if add:
            index.setdefault(key, {})[ref] = None
            return
        refs = index.get(key)
        if refs is not None:
            refs.pop(ref, None)
            if not refs:
                del index[key]

    def _index_endpoint(self, net: _Net, rec: EndpointRecord, *, add: bool) -> None:
        # On removal the invalid-name count is not bumped again (the record was counted when added).
        saved = self.invalid_names
        ref: _Ref = ("e", rec.endpoint_id, "name", 0)
        for raw in (rec.name, *rec.aliases):
            name = self._name(raw)
            if name is not None:
                self._link(net.names, name, ref, add)
        if normalize_name(rec.name) is not None:
            for addr in rec.addresses:
                self._link(net.ptrs, addr, ref, add)
        if not add:
            self.invalid_names = saved

    def _index_service(self, net: _Net, rec: ServiceRecord, *, add: bool) -> None:
        saved = self.invalid_names
        sid = rec.service_id
        names = [n for n in (self._name(raw) for raw in (rec.name, *rec.aliases)) if n is not None]
        for name in dict.fromkeys(names):
            self._link(net.names, name, ("s", sid, "svc", 0), add)
            self._link(net.names, "tasks." + name, ("s", sid, "tasks", 0), add)
            for j, port in enumerate(rec.ports):
                srv_name = normalize_name(f"_{port.name}._{port.protocol}.{name}")
                if srv_name is not None:
                    self._link(net.names, srv_name, ("s", sid, "srv", j), add)
        if normalize_name(rec.name) is not None:
            for vip in rec.vips:
                self._link(net.ptrs, vip, ("s", sid, "svc", 0), add)
        for i, task in enumerate(rec.tasks):
            ref: _Ref = ("s", sid, "task", i)
            if self._name(task.name) is None:
                continue
            self._link(net.names, normalize_name(task.name), ref, add)
            for addr in task.addresses:
                self._link(net.ptrs, addr, ref, add)
        if not add:
            self.invalid_names = saved

    def _find(self, name: str, nets: list[_Net]) -> tuple[_Net, dict[_Ref, None]] | None:
        for net in nets:
            refs = net.names.get(name)
            if refs:
                return net, refs
        if "." not in name:
            return None
        labels = name.split(".")
        for i in range(len(labels) - 1, 0, -1):
            suffix = ".".join(labels[i:])
            for net in nets:
                if net.name == suffix:
                    refs = net.names.get(".".join(labels[:i]))
                    if refs:
                        return net, refs
        return None

    def _collect(self, net: _Net, refs: dict[_Ref, None]) -> tuple[list[IPAddress], bool, list[tuple]]:
        """(sorted unique addresses, whether they are all VIPs, SRV refs) of one name in one network."""
        addrs: dict[IPAddress, None] = {}
        srv: list[tuple] = []
        stable = True
        for kind, key, role, index in refs:
            if kind == "e":
                addrs.update(dict.fromkeys(net.endpoints[key].addresses))
                stable = False
                continue
            svc = net.services[key]
            if role == "svc" and svc.vips:
                addrs.update(dict.fromkeys(svc.vips))
            elif role in ("svc", "tasks"):
                for task in svc.tasks:
                    addrs.update(dict.fromkeys(task.addresses))
                stable = False
            elif role == "task":
                addrs.update(dict.fromkeys(svc.tasks[index].addresses))
                stable = False
            elif role == "srv":
                srv.append((svc, svc.ports[index]))
        ordered = sorted(addrs, key=lambda a: (a.version, a))
        return ordered, stable and bool(ordered), srv

    def _answer(self, net: _Net, refs: dict[_Ref, None], qtype: int) -> Resolution:
        addrs, stable, srv_refs = self._collect(net, refs)
        if qtype == SRV:
            answer: list[Rr] = []
            extra: dict[tuple, Rr] = {}
            for svc, port in srv_refs:
                for task in svc.tasks:
                    target = self._qualify(task.name, net)
                    if target is None:
                        continue
                    answer.append(Rr(SRV, Srv(0, 0, port.port, target)))
                    for addr in task.addresses:
                        rr = Rr(A if addr.version == 4 else AAAA, addr, owner=target)
                        extra[(target, addr)] = rr
            unique = list(dict.fromkeys(answer))
            if not unique:
                return _NODATA
            return Resolution(Status.ANSWER, tuple(unique), tuple(extra.values()))
        return _records(qtype, [(a, stable) for a in addrs], ())

    def _qualify(self, name: str, net: _Net) -> str | None:
        base = normalize_name(name)
        if base is None or net.name is None:
            return base
        return normalize_name(f"{base}.{net.name}")

    def _resolve_reverse(self, reverse: tuple[int, int, int], qtype: int, nets: list[_Net]) -> Resolution:
        version, value, bits = reverse
        full_bits = 32 if version == 4 else 128
        if bits == full_bits:
            addr = ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value)
            targets: dict[str, None] = {}
            stable = True
            for net in nets:
                for kind, key, role, index in net.ptrs.get(addr, ()):
                    if kind == "e":
                        owner_name, stable = net.endpoints[key].name, False
                    elif role == "task":
                        owner_name, stable = net.services[key].tasks[index].name, False
                    else:
                        owner_name = net.services[key].name
                    target = self._qualify(owner_name, net)
                    if target is not None:
                        targets[target] = None
            if targets:
                if qtype not in (PTR, ANY):
                    return _NODATA
                return Resolution(Status.ANSWER, tuple(Rr(PTR, t, is_stable=stable) for t in targets))
        for net in nets:
            for subnet in net.subnets:
                plen = subnet.prefixlen
                if (
                    subnet.version == version
                    and bits >= plen
                    and value >> (bits - plen) == int(subnet.network_address) >> (full_bits - plen)
                ):
                    return _NXDOMAIN if bits == full_bits else _NODATA
        # Rule 6 for reverse names: an address in any cluster subnet (scoped or not) never leaks.
        for net in self._nets.values():
            for subnet in net.subnets:
                plen = subnet.prefixlen
                if (
                    subnet.version == version
                    and bits >= plen
                    and value >> (bits - plen) == int(subnet.network_address) >> (full_bits - plen)
                ):
                    return _NXDOMAIN if bits == full_bits else _NODATA
        return _FORWARD


def _records(qtype: int, addrs: list[tuple[IPAddress, bool]], extra: tuple[Rr, ...]) -> Resolution:
    wanted = [
        Rr(A if a.version == 4 else AAAA, a, is_stable=s)
        for a, s in addrs
        if qtype == ANY or (qtype == A and a.version == 4) or (qtype == AAAA and a.version == 6)
    ]
    if not wanted:
        return _NODATA
    return Resolution(Status.ANSWER, tuple(wanted), extra)
