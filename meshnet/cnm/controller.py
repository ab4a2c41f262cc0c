"""The CNM controller core (pure): validation, lookups and operations as ordered steps with undo.

Theory of operation. The controller holds what one host knows of the CNM: a mirror of the replicated
tables (``networks``; ``endpoint_table`` of the networks this host has joined in NetworkDB), fed by the
runtime from NetworkDB watch events (``apply_network_entry``/``apply_endpoint_entry``; a malformed value
is counted and dropped), and this host's sandboxes (its own state, saved in ``sandboxes.json``).

Every mutating request is a method that validates its input against that state (raising a
``meshnet.cnm.errors`` subclass and changing nothing on bad input) and returns an ``Operation``: the steps
in libnetwork's order with their undo actions (``meshnet.cnm.steps`` says how the runtime drives it). The
runtime must run one operation at a time (a lock): each was validated against the state its
predecessors left. The orders (libnetwork.md 1.2-1.6):

- network create: IPAM (VNI, subnets, gateways) -> ``networks`` entry.
- network delete: IPAM delete (refuses while addresses are held anywhere) -> ``networks`` entry deleted.
- endpoint create: attach to the network (IPAM + NetworkDB join) -> re-check the name against what the
  join synced -> allocate IPv4 / IPv6 -> ``endpoint_table`` entry (MAC from the IPv4 address).
- endpoint delete: entry deleted -> addresses released -> leave the NetworkDB network if it was the last.
- sandbox create: local state -> ``sandboxes.json`` -> dataplane (the namespace, ``lo`` up).
- join: local state (interface name) -> ``sandboxes.json`` -> dataplane (overlay namespace on the first
  join, veth, addresses) -> endpoint entry with its sandbox (libnetwork: driver Join before the table).
- leave: local state -> ``sandboxes.json`` -> dataplane (veth gone; the overlay namespace after the last
  leave) -> endpoint entry without sandbox.
- sandbox delete: leave every joined endpoint (last joined first), then the sandbox, then (by default,
  as ``docker rm`` does) delete the endpoints it had.
- attach: endpoint create, sandbox create if missing, join: one operation, all or nothing (the endpoint
  first, so peers program its record while this host creates and plugs the sandbox).

Ids are 24 lowercase hex characters from the injected ``random.Random``. Name lookups: an exact id
first, then the name; several networks with one name (created concurrently on two hosts) resolve to the
smallest ``(created, id)``.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshnet.core.errors import DecodeError
from meshnet.dataplane.ops import valid_netns
from meshnet.overlay.view import HostView, LocalSandbox, overlay_netns, sandbox_netns

from .errors import InUse, InvalidRequest, NameConflict, NotFound, NotLocal, NotSupported
from .records import (
    EndpointRecord,
    NetworkRecord,
    SubnetRecord,
    decode_endpoint,
    decode_network,
    mac_from_ip,
)
from .sandboxes import Sandbox, decode_sandbox_state, encode_sandboxes
from .steps import (
    Action,
    AllocateAddress,
    AttachNetwork,
    DeleteEndpoint,
    DeleteNetwork,
    DetachNetwork,
    IpamCreateNetwork,
    IpamDeleteNetwork,
    Local,
    Operation,
    PersistSandboxes,
    PutEndpoint,
    PutNetwork,
    Reconcile,
    ReleaseAddress,
    Step,
)

__all__ = ["CnmConfig", "Controller", "AttachResult", "MIN_VXLAN_PORT", "MAX_VXLAN_PORT"]

#: libnetwork's allowed data-path ports (overlayutils), 4789 included.
MIN_VXLAN_PORT = 1024
MAX_VXLAN_PORT = 49151

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ALIAS = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)
_NETNS_MAX = 64


@dataclass(frozen=True, slots=True)
class CnmConfig:
    """This host as the CNM sees it: node name, data-path (VTEP) address, namespace prefix, underlay MTU."""

    host: str
    vtep: str
    netns_prefix: str = "mn-"
    underlay_mtu: int = 1500


@dataclass(frozen=True, slots=True)
class AttachResult:
    """What ``attach`` made: the sandbox (joined), the endpoint, and whether the sandbox was new."""

    sandbox: Sandbox
    endpoint: EndpointRecord
    created_sandbox: bool


def _need_str(value: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidRequest(f"{what} must be a {'' if allow_empty else 'non-empty '}string")
    return value


def _need_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be true or false")
    return value


def _need_int(value: object, what: str, low: int, high: int, *, zero_ok: bool = False) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not (low <= value <= high or (zero_ok and value == 0))
    ):
        extra = " (or 0 for the default)" if zero_ok else ""
        raise InvalidRequest(f"{what} must be an integer in {low}..{high}{extra}")
    return value


def _need_name(value: object, what: str) -> str:
    name = _need_str(value, what)
    if _NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"{what} {name!r} must start with a letter or digit and hold at most 64 letters, digits, '_', '.' or '-'"
        )
    return name


def _strip_prefix(address: Any) -> str:
    if not isinstance(address, str):
        raise InvalidRequest(f"IPAM returned {address!r}, not an address")
    return str(ipaddress.ip_address(address.split("/", 1)[0]))


def _mac_for(ipv4: str | None, ipv6: str | None) -> str:
    """libnetwork's MAC from the IPv4 address; an IPv6-only endpoint uses the low 32 bits of its address."""
    if ipv4 is not None:
        return mac_from_ip(ipv4)
    assert ipv6 is not None
    low = int(ipaddress.IPv6Address(ipv6)) & 0xFFFFFFFF
    return mac_from_ip(str(ipaddress.IPv4Address(low)))


class Controller:
    """One host's CNM state and the operations on it (module docstring)."""

    def __init__(self, config: CnmConfig, *, rng: random.Random, sandboxes: Iterable[Sandbox] = ()) -> None:
        self.config = config
        self._rng = rng
        self._networks: dict[str, NetworkRecord] = {}
        self._endpoints: dict[str, dict[str, EndpointRecord]] = {}  # network id -> endpoint id -> record
        self._sandboxes: dict[str, Sandbox] = {sb.id: sb for sb in sandboxes}
        # Copies of the joined endpoints' records and their networks from sandboxes.json (``load_state``):
        # used only while the tables lack them (a restart before the sync).
        self._saved_networks: dict[str, NetworkRecord] = {}
        self._saved_endpoints: dict[str, EndpointRecord] = {}
        self.counters: dict[str, int] = {"bad_network_records": 0, "bad_endpoint_records": 0}

    def load_state(self, data: bytes) -> None:
        """Adopt ``sandboxes.json`` (a restart): its sandboxes, and its copies of the joined endpoints'
        records and their networks, which ``host_view`` uses until the tables have them. Call it before
        any operation. ``BadSandboxState`` (nothing changed) when the file is malformed."""
        state = decode_sandbox_state(data)
        self._sandboxes = {sb.id: sb for sb in state.sandboxes}
        self._saved_networks = {n.id: n for n in state.networks}
        self._saved_endpoints = {e.id: e for e in state.endpoints}

    # --- the mirror (remote input: never raises) --------------------------------------------------

    def apply_network_entry(self, key: str, value: bytes | None) -> None:
        """A ``networks`` entry created/updated (``value``) or deleted (None)."""
        if value is None:
            self._networks.pop(key, None)
            return
        try:
            rec = decode_network(value)
            if rec.id != key:
                raise DecodeError(f"network record id {rec.id!r} under key {key!r}")
        except DecodeError:
            self.counters["bad_network_records"] += 1
            return
        self._networks[key] = rec

    def apply_endpoint_entry(self, network: str, key: str, value: bytes | None) -> None:
        """An ``endpoint_table`` entry of NetworkDB network ``network`` created/updated or deleted (None)."""
        if value is None:
            eps = self._endpoints.get(network)
            if eps is not None:
                eps.pop(key, None)
                if not eps:
                    del self._endpoints[network]
            return
        try:
            rec = decode_endpoint(value)
            if rec.id != key or rec.network != network:
                raise DecodeError(f"endpoint record {rec.id!r}/{rec.network!r} under {network!r}/{key!r}")
        except DecodeError:
            self.counters["bad_endpoint_records"] += 1
            return
        self._endpoints.setdefault(network, {})[key] = rec

    def forget_network(self, network: str) -> None:
        """This host left the NetworkDB network: drop its endpoint entries from the mirror."""
        self._endpoints.pop(network, None)

    def _mirror(self, action: Action, result: Any) -> None:
        if isinstance(action, PutNetwork):
            self._networks[action.record.id] = action.record
        elif isinstance(action, DeleteNetwork):
            self._networks.pop(action.network, None)
        elif isinstance(action, PutEndpoint):
            self._endpoints.setdefault(action.record.network, {})[action.record.id] = action.record
        elif isinstance(action, DeleteEndpoint):
            self.apply_endpoint_entry(action.network, action.endpoint, None)

    # --- reads ------------------------------------------------------------------------------------

    def networks(self) -> list[NetworkRecord]:
        """Every known network, by ``(created, id)``."""
        return sorted(self._networks.values(), key=lambda n: (n.created, n.id))

    def network(self, ref: str) -> NetworkRecord:
        """By id, else by name (smallest ``(created, id)`` of that name); ``NotFound``."""
        _need_str(ref, "network")
        rec = self._networks.get(ref)
        if rec is not None:
            return rec
        named = [n for n in self._networks.values() if n.name == ref]
        if not named:
            raise NotFound(f"no network {ref!r}")
        return min(named, key=lambda n: (n.created, n.id))

    def duplicate_network_names(self) -> set[str]:
        """Names two or more networks carry (``network ls`` flags them)."""
        seen: dict[str, int] = {}
        for n in self._networks.values():
            seen[n.name] = seen.get(n.name, 0) + 1
        return {name for name, count in seen.items() if count > 1}

    def endpoints(self, network: str | None = None) -> list[EndpointRecord]:
        """Endpoints this host sees (of one network id, or all), by network then id."""
        nets = [network] if network is not None else sorted(self._endpoints)
        return [ep for n in nets for _, ep in sorted(self._endpoints.get(n, {}).items())]

    def local_endpoints(self, network: str | None = None) -> list[EndpointRecord]:
        """The endpoints that live on this host."""
        return [ep for ep in self.endpoints(network) if ep.host == self.config.host]

    def endpoint(self, ref: str, *, network: str | None = None) -> EndpointRecord:
        """By id, else by name (in ``network`` if given; a name is unique per network, so without a
        network the local endpoint of that name wins, then the smallest id); ``NotFound``."""
        _need_str(ref, "endpoint")
        net_id = self.network(network).id if network is not None else None
        nets = [net_id] if net_id is not None else sorted(self._endpoints)
        for n in nets:
            rec = self._endpoints.get(n, {}).get(ref)
            if rec is not None:
                return rec
        named = [ep for n in nets for ep in self._endpoints.get(n, {}).values() if ep.name == ref]
        if not named:
            raise NotFound(f"no endpoint {ref!r}" + (f" in network {network!r}" if network else ""))
        return min(named, key=lambda e: (e.host != self.config.host, e.id))

    def sandboxes(self) -> list[Sandbox]:
        """This host's sandboxes, by name."""
        return sorted(self._sandboxes.values(), key=lambda s: (s.name, s.id))

    def sandbox(self, ref: str) -> Sandbox:
        """By id, else by name; ``NotFound``."""
        _need_str(ref, "sandbox")
        sb = self._sandboxes.get(ref)
        if sb is not None:
            return sb
        for sb in self._sandboxes.values():
            if sb.name == ref:
                return sb
        raise NotFound(f"no sandbox {ref!r}")

    def sandbox_of(self, endpoint_id: str) -> Sandbox | None:
        """The local sandbox ``endpoint_id`` is joined to, or None."""
        for sb in self._sandboxes.values():
            if sb.ifname_of(endpoint_id) is not None:
                return sb
        return None

    def _joined_records(self) -> tuple[dict[str, NetworkRecord], dict[str, EndpointRecord]]:
        """The records (tables first, else the saved copies) of every joined endpoint and its network."""
        nets: dict[str, NetworkRecord] = {}
        eps: dict[str, EndpointRecord] = {}
        for sb in self._sandboxes.values():
            for ep_id, _ in sb.interfaces:
                ep = self._find_local(ep_id) or self._saved_endpoints.get(ep_id)
                if ep is None:
                    continue
                ep = replace(ep, sandbox=sb.id)  # as it is once joined (the file then never depends on order)
                eps[ep.id] = ep
                net = self._networks.get(ep.network) or self._saved_networks.get(ep.network)
                if net is not None:
                    nets[net.id] = net
        return nets, eps

    def sandboxes_json(self) -> bytes:
        """The bytes of ``sandboxes.json``: the sandboxes and copies of their endpoints' records."""
        nets, eps = self._joined_records()
        return encode_sandboxes(list(self._sandboxes.values()), list(nets.values()), list(eps.values()))

    def host_view(self, *, underlay_mtu: int | None = None) -> HostView:
        """The overlay reconciler's input (``meshnet.overlay.desired``): the tables, plus the saved copies
        of joined endpoints' records and networks the tables do not have (yet)."""
        networks = self.networks()
        endpoints = self.endpoints()
        if self._saved_networks or self._saved_endpoints:
            nets, eps = self._joined_records()
            known_eps = {ep.id for ep in endpoints}
            networks += [n for n in nets.values() if n.id not in self._networks]
            endpoints += [e for e in eps.values() if e.id not in known_eps]
        return HostView(
            host=self.config.host,
            netns_prefix=self.config.netns_prefix,
            underlay_mtu=underlay_mtu if underlay_mtu is not None else self.config.underlay_mtu,
            vtep=self.config.vtep,
            networks=tuple(networks),
            endpoints=tuple(endpoints),
            sandboxes=tuple(
                LocalSandbox(id=sb.id, netns=sb.netns, managed=sb.managed, interfaces=sb.interfaces)
                for sb in self.sandboxes()
            ),
        )

    def stats(self) -> dict[str, Any]:
        return {
            "networks": len(self._networks),
            "endpoints": sum(len(v) for v in self._endpoints.values()),
            "local_endpoints": len(self.local_endpoints()),
            "sandboxes": len(self._sandboxes),
            **self.counters,
        }

    # --- helpers for operations -----------------------------------------------------------------

    def _new_id(self, taken: Callable[[str], bool]) -> str:
        while True:
            candidate = f"{self._rng.getrandbits(96):024x}"
            if not taken(candidate):
                return candidate

    def _op(self, kind: str, steps: list[Step], result: Callable[[Mapping[str, Any]], Any]) -> Operation:
        """The operation; its rollback ends, once every step's own undo ran (so the state is as before),
        with ``sandboxes.json`` written again (if a step changed sandboxes) and one ``Reconcile`` of every
        namespace a step reconciled: the dataplane depends on the sandboxes and on the endpoint records
        alike (an address claimed by a local endpoint hides a stale remote record), so it is re-derived
        from the fully reverted state, never from a half-reverted one."""
        namespaces: dict[str, None] = {}
        sandboxes = False
        for step in steps:
            if isinstance(step.do, Reconcile):
                namespaces.update(dict.fromkeys(step.do.namespaces))
            if isinstance(step.do, Local) and step.do.what.startswith("sandbox"):
                sandboxes = True
        final: list[Any] = []
        if sandboxes:
            final.append(self._persist())
        if namespaces:
            final.append(Reconcile(tuple(namespaces)))
        return Operation(kind, tuple(steps), result, self._mirror, tuple(final))

    def _persist(self) -> Callable[[Mapping[str, Any]], PersistSandboxes]:
        return lambda ctx: PersistSandboxes(self.sandboxes_json())

    def _set_sandbox(self, sb: Sandbox) -> Local:
        def fn() -> None:
            self._sandboxes[sb.id] = sb

        return Local(f"sandbox {sb.name}: set", fn)

    def _drop_sandbox(self, sandbox_id: str) -> Local:
        return Local(f"sandbox {sandbox_id}: drop", lambda: self._sandboxes.pop(sandbox_id, None))

    def _update_sandbox(self, sandbox_id: str, change: Callable[[Sandbox], Sandbox], what: str) -> Local:
        def fn() -> None:
            self._sandboxes[sandbox_id] = change(self._sandboxes[sandbox_id])

        return Local(f"sandbox {sandbox_id}: {what}", fn)

    def _ov_netns(self, network_id: str) -> tuple[str, ...]:
        net = self._networks.get(network_id)
        return (overlay_netns(self.config.netns_prefix, net.vni),) if net is not None else ()

    def _detach_if_unused(self, network_id: str) -> Callable[[Mapping[str, Any]], DetachNetwork | None]:
        def thunk(ctx: Mapping[str, Any]) -> DetachNetwork | None:
            return None if self.local_endpoints(network_id) else DetachNetwork(network_id)

        return thunk

    # --- networks -------------------------------------------------------------------------------

    def create_network(
        self,
        *,
        name: object,
        subnet: object = None,
        gateway: object = None,
        ipv6: object = False,
        mtu: object = 0,
        vxlan_port: object = 4789,
        labels: object = None,
        internal: object = False,
        attachable: object = True,
        encrypted: object = False,
        driver: object = "overlay",
        now: float,
    ) -> Operation:
        """``POST /v1/networks``. Result: the ``NetworkRecord``."""
        name = _need_name(name, "network name")
        if _need_bool(encrypted, "encrypted"):
            raise NotSupported("encrypted networks are not supported yet")
        if driver != "overlay":
            raise NotSupported(f"driver {driver!r} is not supported; meshnet networks use the overlay driver")
        subnets = self._parse_subnets(subnet)
        gw = self._parse_gateway(gateway, subnets)
        ipv6 = _need_bool(ipv6, "ipv6")
        mtu = _need_int(mtu, "mtu", 68, 65535, zero_ok=True)
        port = _need_int(vxlan_port, "vxlan_port", MIN_VXLAN_PORT, MAX_VXLAN_PORT)
        labels = {} if labels is None else labels
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidRequest("labels must be an object of string values")
        internal = _need_bool(internal, "internal")
        attachable = _need_bool(attachable, "attachable")
        taken = [n for n in self._networks.values() if n.name == name]
        if taken:
            raise NameConflict(f"network name {name!r} is taken (network {taken[0].id})")
        net_id = self._new_id(lambda i: i in self._networks)
        subnet_texts = tuple(str(s) for s in subnets)

        def record(ctx: Mapping[str, Any]) -> PutNetwork:
            cfg = ctx["ipam_create"]
            vni = getattr(cfg, "vni", None)
            if not isinstance(vni, int) or not 1 <= vni < 2**24:
                raise InvalidRequest(f"IPAM gave network {net_id} no usable VNI ({vni!r})")
            subs = tuple(SubnetRecord(str(s.subnet), str(s.gateway)) for s in cfg.subnets)
            return PutNetwork(
                NetworkRecord(
                    id=net_id,
                    name=name,
                    vni=vni,
                    subnets=subs,
                    mtu=mtu,
                    vxlan_port=port,
                    labels=dict(labels),
                    internal=internal,
                    attachable=attachable,
                    creator=self.config.host,
                    created=float(now),
                )
            )

        steps = [
            Step(
                "ipam_create", IpamCreateNetwork(net_id, subnet_texts, gw, ipv6), (IpamDeleteNetwork(net_id),)
            ),
            Step("put_network", record, (DeleteNetwork(net_id),)),
        ]
        return self._op("network_create", steps, lambda ctx: self._networks[net_id])

    def create_network_from(self, body: Mapping[str, Any], *, now: float) -> Operation:
        """``create_network`` from the API's JSON object; unknown fields are refused."""
        allowed = {
            "name",
            "subnet",
            "gateway",
            "ipv6",
            "mtu",
            "vxlan_port",
            "labels",
            "internal",
            "attachable",
            "encrypted",
            "driver",
        }
        return self.create_network(**_fields(body, allowed, "network", ("name",)), now=now)

    @staticmethod
    def _parse_subnets(subnet: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
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

    @staticmethod
    def _parse_gateway(
        gateway: object, subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    ) -> str | None:
        if gateway is None:
            return None
        text = _need_str(gateway, "gateway")
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

    def delete_network(self, ref: str) -> Operation:
        """``DELETE /v1/networks/{id|name}``: ``InUse`` while endpoints exist. The host joins the network's
        NetworkDB network first to see every host's endpoints, checks again, deletes the record, then
        IPAM (which refuses too while addresses are held), then leaves. Result: the deleted record."""
        net = self.network(ref)
        self._check_unused(net)
        steps = [
            Step("attach_network", AttachNetwork(net.id), (self._detach_if_unused(net.id),)),
            Step("check_unused", Local(f"network {net.name} unused", lambda: self._check_unused(net))),
            Step("delete_network", DeleteNetwork(net.id), (PutNetwork(net),)),
            Step("ipam_delete", IpamDeleteNetwork(net.id)),
            Step("detach_network", self._detach_if_unused(net.id), best_effort=True),
        ]
        return self._op("network_delete", steps, lambda ctx: net)

    def _check_unused(self, net: NetworkRecord) -> None:
        eps = self.endpoints(net.id)
        if eps:
            hosts = sorted({ep.host for ep in eps})
            raise InUse(
                f"network {net.name} ({net.id}) still has {len(eps)} endpoint(s) on {', '.join(hosts)}; "
                "delete them first"
            )

    # --- endpoints ------------------------------------------------------------------------------

    def _check_endpoint_name(self, net: NetworkRecord, name: str) -> None:
        for ep in self._endpoints.get(net.id, {}).values():
            if ep.name == name:
                raise NameConflict(
                    f"endpoint name {name!r} is taken in network {net.name} (endpoint {ep.id} on {ep.host})"
                )

    def _validate_endpoint(
        self, network: object, name: object, ip: object, aliases: object, service: object
    ) -> tuple[NetworkRecord, str, str | None, tuple[str, ...], str]:
        net = self.network(_need_str(network, "network"))
        name = _need_name(name, "endpoint name")
        if aliases is None:
            aliases = []
        if not isinstance(aliases, list | tuple) or not all(isinstance(a, str) for a in aliases):
            raise InvalidRequest("aliases must be a list of names")
        for a in aliases:
            if len(a) > 253 or _ALIAS.fullmatch(a) is None:
                raise InvalidRequest(f"alias {a!r} is not a DNS name")
        service = _need_str(service if service is not None else "", "service", allow_empty=True)
        if service and _NAME.fullmatch(service) is None:
            raise InvalidRequest(f"service {service!r} must be a name like 'web'")
        if not net.attachable and not service:
            raise InvalidRequest(f"network {net.name} is not attachable: only service tasks may join it")
        addr: str | None = None
        if ip is not None:
            text = _need_str(ip, "ip")
            try:
                parsed = ipaddress.ip_address(text)
            except ValueError:
                raise InvalidRequest(f"ip {text!r} is not an IP address") from None
            subnets = [ipaddress.ip_network(s.subnet) for s in net.subnets]
            home = next((s for s in subnets if parsed in s), None)
            if home is None:
                raise InvalidRequest(
                    f"ip {parsed} is in no subnet of network {net.name} ({', '.join(map(str, subnets))})"
                )
            gws = {ipaddress.ip_address(s.gateway) for s in net.subnets}
            if (
                parsed in gws
                or parsed == home.network_address
                or (home.version == 4 and parsed == home.broadcast_address)
            ):
                raise InvalidRequest(f"ip {parsed} is the gateway, network or broadcast address of {home}")
            addr = str(parsed)
        self._check_endpoint_name(net, name)
        return net, name, addr, tuple(dict.fromkeys(aliases)), service

    def _endpoint_steps(
        self,
        net: NetworkRecord,
        ep_id: str,
        name: str,
        ip: str | None,
        aliases: tuple[str, ...],
        service: str,
    ) -> list[Step]:
        has_v4 = any(":" not in s.subnet for s in net.subnets)
        has_v6 = any(":" in s.subnet for s in net.subnets)
        if not (has_v4 or has_v6):
            raise InvalidRequest(f"network {net.name} has no subnet")
        want_v4 = has_v4
        want_v6 = has_v6

        def check_name() -> None:
            self._check_endpoint_name(net, name)

        def record(ctx: Mapping[str, Any]) -> PutEndpoint:
            ipv4 = _strip_prefix(ctx["allocate_ipv4"]) if want_v4 else None
            ipv6 = _strip_prefix(ctx["allocate_ipv6"]) if want_v6 else None
            return PutEndpoint(
                EndpointRecord(
                    id=ep_id,
                    name=name,
                    network=net.id,
                    host=self.config.host,
                    vtep=self.config.vtep,
                    mac=_mac_for(ipv4, ipv6),
                    ipv4=ipv4,
                    ipv6=ipv6,
                    aliases=aliases,
                    service=service,
                )
            )

        def release(key: str) -> Callable[[Mapping[str, Any]], ReleaseAddress]:
            return lambda ctx: ReleaseAddress(net.id, _strip_prefix(ctx[key]), ep_id)

        steps = [
            Step("attach_network", AttachNetwork(net.id), (self._detach_if_unused(net.id),)),
            Step("check_name", Local(f"endpoint name {name} still free", check_name)),
        ]
        if want_v4:
            pref = ip if ip is not None and ":" not in ip else None
            steps.append(
                Step(
                    "allocate_ipv4", AllocateAddress(net.id, ep_id, pref, False), (release("allocate_ipv4"),)
                )
            )
        if want_v6:
            pref = ip if ip is not None and ":" in ip else None
            steps.append(
                Step("allocate_ipv6", AllocateAddress(net.id, ep_id, pref, True), (release("allocate_ipv6"),))
            )
        steps.append(Step("put_endpoint", record, (DeleteEndpoint(net.id, ep_id),)))
        return steps

    def _endpoint_id(self) -> str:
        return self._new_id(lambda i: any(i in eps for eps in self._endpoints.values()))

    def create_endpoint(
        self,
        *,
        network: object,
        name: object,
        ip: object = None,
        aliases: object = (),
        service: object = "",
    ) -> Operation:
        """``POST /v1/endpoints``. Result: the ``EndpointRecord``."""
        net, name, ip, aliases, service = self._validate_endpoint(network, name, ip, aliases, service)
        ep_id = self._endpoint_id()
        steps = self._endpoint_steps(net, ep_id, name, ip, aliases, service)
        return self._op("endpoint_create", steps, lambda ctx: self._endpoints[net.id][ep_id])

    def create_endpoint_from(self, body: Mapping[str, Any]) -> Operation:
        """``create_endpoint`` from the API's JSON object; unknown fields are refused."""
        return self.create_endpoint(
            **_fields(body, {"network", "name", "ip", "aliases", "service"}, "endpoint", ("network", "name"))
        )

    def _local_endpoint(self, ref: str, network: str | None = None) -> EndpointRecord:
        ep = self.endpoint(ref, network=network)
        if ep.host != self.config.host:
            raise NotLocal(f"endpoint {ep.name} ({ep.id}) lives on host {ep.host}; change it there")
        return ep

    def _delete_endpoint_steps(self, ep: EndpointRecord, label: str = "") -> list[Step]:
        def realloc(address: str, v6: bool) -> AllocateAddress:
            return AllocateAddress(ep.network, ep.id, address, v6)

        steps = [Step(f"{label}delete_endpoint", DeleteEndpoint(ep.network, ep.id), (PutEndpoint(ep),))]
        if ep.ipv4:
            steps.append(
                Step(
                    f"{label}release_ipv4",
                    ReleaseAddress(ep.network, ep.ipv4, ep.id),
                    (realloc(ep.ipv4, False),),
                )
            )
        if ep.ipv6:
            steps.append(
                Step(
                    f"{label}release_ipv6",
                    ReleaseAddress(ep.network, ep.ipv6, ep.id),
                    (realloc(ep.ipv6, True),),
                )
            )
        steps.append(Step(f"{label}detach_network", self._detach_if_unused(ep.network), best_effort=True))
        return steps

    def delete_endpoint(self, ref: str, *, network: str | None = None) -> Operation:
        """``DELETE /v1/endpoints/{id|name}``: local endpoints only (``NotLocal``), not joined (``InUse``).
        Result: the deleted record."""
        ep = self._local_endpoint(ref, network)
        sb = self.sandbox_of(ep.id)
        if sb is not None:
            raise InUse(f"endpoint {ep.name} is joined to sandbox {sb.name}; leave it first")
        return self._op("endpoint_delete", self._delete_endpoint_steps(ep), lambda ctx: ep)

    # --- sandboxes ------------------------------------------------------------------------------

    def _new_sandbox(self, name: object, netns: object, now: float) -> Sandbox:
        name = _need_name(name, "sandbox name")
        for sb in self._sandboxes.values():
            if sb.name == name:
                raise NameConflict(f"sandbox name {name!r} is taken (sandbox {sb.id})")
        if netns is None:
            path = sandbox_netns(self.config.netns_prefix, name)
            if len(path) > _NETNS_MAX or not valid_netns(path):
                raise InvalidRequest(f"sandbox name {name!r} is too long for a namespace name ({path})")
            managed = True
        else:
            path = _need_str(netns, "netns")
            if not path.startswith("/") or not valid_netns(path):
                raise InvalidRequest(
                    f"netns {path!r} must be an absolute path (/run/netns/NAME, /proc/PID/ns/net)"
                )
            managed = False
        for sb in self._sandboxes.values():
            if sb.netns == path:
                raise NameConflict(f"namespace {path} is already sandbox {sb.name}")
        sb_id = self._new_id(lambda i: i in self._sandboxes)
        return Sandbox(sb_id, name, path, managed, float(now))

    def _sandbox_create_steps(self, sb: Sandbox) -> list[Step]:
        reconcile = Reconcile((sb.netns,))
        steps = [
            Step("sandbox_add", self._set_sandbox(sb), (self._drop_sandbox(sb.id),)),
            Step("sandbox_persist", self._persist()),
        ]
        if sb.managed:
            steps.append(Step("sandbox_reconcile", reconcile))
        return steps

    def create_sandbox(self, *, name: object, netns: object = None, now: float) -> Operation:
        """``POST /v1/sandboxes``: meshnet creates ``{prefix}sb-NAME``, or adopts the namespace at path
        ``netns``. Result: the ``Sandbox``."""
        sb = self._new_sandbox(name, netns, now)
        return self._op("sandbox_create", self._sandbox_create_steps(sb), lambda ctx: self._sandboxes[sb.id])

    def create_sandbox_from(self, body: Mapping[str, Any], *, now: float) -> Operation:
        return self.create_sandbox(**_fields(body, {"name", "netns"}, "sandbox", ("name",)), now=now)

    def delete_sandbox(self, ref: str, *, delete_endpoints: bool = True) -> Operation:
        """``DELETE /v1/sandboxes/{id|name}``: leave every joined endpoint (last joined first), remove the
        sandbox (and its namespace if meshnet made it), then delete the endpoints it had (unless
        ``delete_endpoints`` is False). Result: the removed ``Sandbox``."""
        sb = self.sandbox(ref)
        steps: list[Step] = []
        eps: list[EndpointRecord] = []
        for ep_id, ifname in reversed(sb.interfaces):
            ep = self._find_local(ep_id)
            steps += self._leave_steps(sb.id, ep_id, ifname, ep, f"leave_{ep_id[:8]}_")
            if ep is not None:
                eps.append(ep)
        reconcile = Reconcile((sb.netns,))
        emptied = replace(sb, interfaces=())
        steps += [
            Step(
                "sandbox_drop",
                self._drop_sandbox(sb.id),
                (self._set_sandbox(emptied),),
            ),
            Step("sandbox_persist", self._persist()),
        ]
        if sb.managed:
            steps.append(Step("sandbox_reconcile", reconcile))
        if delete_endpoints:
            for ep in eps:
                unjoined = replace(ep, sandbox="")
                steps += self._delete_endpoint_steps(unjoined, f"delete_{ep.id[:8]}_")
        return self._op("sandbox_delete", steps, lambda ctx: sb)

    def _find_local(self, ep_id: str) -> EndpointRecord | None:
        for eps in self._endpoints.values():
            ep = eps.get(ep_id)
            if ep is not None:
                return ep
        return None

    # --- join and leave -------------------------------------------------------------------------

    def _join_steps(
        self,
        sandbox_id: str,
        ep_id: str,
        ifname: str,
        network_id: str,
        record: Callable[[Mapping[str, Any]], EndpointRecord],
        netns: str,
        label: str = "",
    ) -> list[Step]:
        reconcile = Reconcile((*self._ov_netns(network_id), netns))
        return [
            Step(
                f"{label}join_local",
                self._update_sandbox(
                    sandbox_id, lambda s: s.joined(ep_id, ifname), f"join {ep_id} as {ifname}"
                ),
                (self._update_sandbox(sandbox_id, lambda s: s.left(ep_id), f"unjoin {ep_id}"),),
            ),
            Step(f"{label}join_persist", self._persist()),
            Step(f"{label}join_reconcile", reconcile),
            Step(
                f"{label}join_put_endpoint",
                lambda ctx: PutEndpoint(replace(record(ctx), sandbox=sandbox_id)),
                (lambda ctx: PutEndpoint(record(ctx)),),
            ),
        ]

    def _leave_steps(
        self, sandbox_id: str, ep_id: str, ifname: str, ep: EndpointRecord | None, label: str = ""
    ) -> list[Step]:
        sb = self._sandboxes[sandbox_id]
        reconcile = Reconcile((*(self._ov_netns(ep.network) if ep is not None else ()), sb.netns))
        steps = [
            Step(
                f"{label}leave_local",
                self._update_sandbox(sandbox_id, lambda s: s.left(ep_id), f"leave {ep_id}"),
                (self._update_sandbox(sandbox_id, lambda s: s.joined(ep_id, ifname), f"rejoin {ep_id}"),),
            ),
            Step(f"{label}leave_persist", self._persist()),
            Step(f"{label}leave_reconcile", reconcile),
        ]
        if ep is not None and ep.sandbox:
            steps.append(
                Step(f"{label}leave_put_endpoint", PutEndpoint(replace(ep, sandbox="")), (PutEndpoint(ep),))
            )
        return steps

    def _check_join(self, sb: Sandbox, ep: EndpointRecord) -> None:
        other = self.sandbox_of(ep.id)
        if other is not None:
            raise InUse(f"endpoint {ep.name} is already joined to sandbox {other.name}")
        if ep.network not in self._networks:
            raise NotFound(f"network {ep.network} of endpoint {ep.name} is not known here")
        for joined in sb.endpoints():
            rec = self._find_local(joined)
            if rec is not None and rec.network == ep.network:
                raise NameConflict(
                    f"sandbox {sb.name} is already on network {ep.network} (endpoint {rec.name})"
                )

    def join(self, sandbox: str, endpoint: str) -> Operation:
        """``POST /v1/sandboxes/{id|name}/join {endpoint}``. Result: the updated ``Sandbox``."""
        sb = self.sandbox(sandbox)
        ep = self._local_endpoint(endpoint)
        self._check_join(sb, ep)
        steps = self._join_steps(sb.id, ep.id, sb.next_ifname(), ep.network, lambda ctx: ep, sb.netns)
        return self._op("join", steps, lambda ctx: self._sandboxes[sb.id])

    def leave(self, sandbox: str, endpoint: str) -> Operation:
        """``POST /v1/sandboxes/{id|name}/leave {endpoint}``. Result: the updated ``Sandbox``."""
        sb = self.sandbox(sandbox)
        ep = self._local_endpoint(endpoint)
        ifname = sb.ifname_of(ep.id)
        if ifname is None:
            raise NotFound(f"endpoint {ep.name} is not joined to sandbox {sb.name}")
        steps = self._leave_steps(sb.id, ep.id, ifname, ep)
        return self._op("leave", steps, lambda ctx: self._sandboxes[sb.id])

    # --- attach ---------------------------------------------------------------------------------

    def attach(
        self,
        *,
        network: object,
        sandbox: object,
        name: object = None,
        ip: object = None,
        aliases: object = (),
        service: object = "",
        now: float,
    ) -> Operation:
        """``POST /v1/attach``: the sandbox (created if missing), a new endpoint, joined. Result:
        ``AttachResult``."""
        sb_name = _need_str(sandbox, "sandbox")
        try:
            sb = self.sandbox(sb_name)
            new_sandbox = False
        except NotFound:
            sb = self._new_sandbox(sb_name, None, now)
            new_sandbox = True
        net, ep_name, addr, aliases_t, service_s = self._validate_endpoint(
            network, name if name is not None else sb.name, ip, aliases, service
        )
        for joined in sb.endpoints():
            rec = self._find_local(joined)
            if rec is not None and rec.network == net.id:
                raise NameConflict(
                    f"sandbox {sb.name} is already on network {net.name} (endpoint {rec.name})"
                )
        ep_id = self._endpoint_id()
        steps: list[Step] = []
        # The endpoint first: its record reaches the peers (which program it) while this host creates
        # the sandbox and plugs it.
        steps += self._endpoint_steps(net, ep_id, ep_name, addr, aliases_t, service_s)
        if new_sandbox:
            steps += self._sandbox_create_steps(sb)
        put = next(s for s in steps if s.name == "put_endpoint")
        steps += self._join_steps(
            sb.id,
            ep_id,
            sb.next_ifname(),
            net.id,
            lambda ctx: put.do(ctx).record,  # type: ignore[operator,union-attr]
            sb.netns,
        )

        def result(ctx: Mapping[str, Any]) -> AttachResult:
            return AttachResult(self._sandboxes[sb.id], self._endpoints[net.id][ep_id], new_sandbox)

        return self._op("attach", steps, result)

    def attach_from(self, body: Mapping[str, Any], *, now: float) -> Operation:
        allowed = {"network", "sandbox", "name", "ip", "aliases", "service"}
        return self.attach(**_fields(body, allowed, "attach", ("network", "sandbox")), now=now)


def _fields(
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
