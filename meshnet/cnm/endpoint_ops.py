"""Endpoint operations of the CNM controller (pure): create and delete, as ordered steps with undo.

Theory of operation (libnetwork.md 1.4). Create validates the request (network, name unique in that
network, aliases, service, an optional fixed address inside a subnet and not its gateway, network or
broadcast address), then: attach to the network (IPAM + NetworkDB join) -> re-check the name against
what the join synced -> allocate IPv4 / IPv6 -> put the ``endpoint_table`` entry (MAC from the IPv4
address; an IPv6-only endpoint uses the low 32 bits of its address) -> reconcile the network's overlay
namespace. Delete (local endpoints only, not joined): entry deleted -> reconcile the overlay namespace ->
addresses released -> leave the NetworkDB network if it was the last local endpoint there (best effort).
``sandbox_ops`` reuses these step lists for attach (whose join reconciles) and sandbox delete.

Why an endpoint that is not joined still reconciles: its record changes the desired overlay of a host
that has one for the network (another local sandbox joined). A local endpoint claims its address and MAC
before remote records do (``meshnet.overlay.desired``), so it hides a remote record with the same address,
e.g. a stale one whose deletion has not arrived yet while this host allocated the released address again.
Creating the endpoint removes that remote's entries; deleting it uncovers the record, whose entries must
be programmed then: no table event for it may ever come (it was delivered long ago).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InUse, InvalidRequest, NameConflict, NotLocal
from .records import EndpointRecord, NetworkRecord
from .state import ControllerState
from .steps import (
    AllocateAddress,
    AttachNetwork,
    DeleteEndpoint,
    Local,
    Operation,
    PutEndpoint,
    Reconcile,
    ReleaseAddress,
    Step,
)
from .validation import ALIAS, NAME, mac_for, need_name, need_str, request_fields, strip_prefix

__all__ = ["EndpointOps"]


class EndpointOps(ControllerState):
    """``create_endpoint`` and ``delete_endpoint`` and the step lists other operations reuse (module docstring)."""

    def _check_endpoint_name(self, net: NetworkRecord, name: str) -> None:
        for ep in self._endpoints.get(net.id, {}).values():
            if ep.name == name:
                raise NameConflict(
                    f"endpoint name {name!r} is taken in network {net.name} (endpoint {ep.id} on {ep.host})"
                )

    def _validate_endpoint(
        self, network: object, name: object, ip: object, aliases: object, service: object
    ) -> tuple[NetworkRecord, str, str | None, tuple[str, ...], str]:
        net = self.network(need_str(network, "network"))
        name = need_name(name, "endpoint name")
        if aliases is None:
            aliases = []
        if not isinstance(aliases, list | tuple) or not all(isinstance(a, str) for a in aliases):
            raise InvalidRequest("aliases must be a list of names")
        for a in aliases:
            if len(a) > 253 or ALIAS.fullmatch(a) is None:
                raise InvalidRequest(f"alias {a!r} is not a DNS name")
        service = need_str(service if service is not None else "", "service", allow_empty=True)
        if service and NAME.fullmatch(service) is None:
            raise InvalidRequest(f"service {service!r} must be a name like 'web'")
        if not net.attachable and not service:
            raise InvalidRequest(f"network {net.name} is not attachable: only service tasks may join it")
        addr: str | None = None
        if ip is not None:
            text = need_str(ip, "ip")
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
            ipv4 = strip_prefix(ctx["allocate_ipv4"]) if want_v4 else None
            ipv6 = strip_prefix(ctx["allocate_ipv6"]) if want_v6 else None
            return PutEndpoint(
                EndpointRecord(
                    id=ep_id,
                    name=name,
                    network=net.id,
                    host=self.config.host,
                    vtep=self.config.vtep,
                    mac=mac_for(ipv4, ipv6),
                    ipv4=ipv4,
                    ipv6=ipv6,
                    aliases=aliases,
                    service=service,
                )
            )

        def release(key: str) -> Callable[[Mapping[str, Any]], ReleaseAddress]:
            return lambda ctx: ReleaseAddress(net.id, strip_prefix(ctx[key]), ep_id)

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
        steps += self._endpoint_reconcile_steps(net.id)
        return self._op("endpoint_create", steps, lambda ctx: self._endpoints[net.id][ep_id])

    def _endpoint_reconcile_steps(self, network_id: str, label: str = "") -> list[Step]:
        """Reconcile the overlay namespace of ``network_id`` after a local endpoint record changed: its
        address may hide or uncover a remote record (module docstring). A plain ``Reconcile`` value, so a
        rollback's final reconcile covers the namespace too."""
        namespaces = self._ov_netns(network_id)
        return [Step(f"{label}endpoint_reconcile", Reconcile(namespaces))] if namespaces else []

    def create_endpoint_from(self, body: Mapping[str, Any]) -> Operation:
        """``create_endpoint`` from the API's JSON object; unknown fields are refused."""
        return self.create_endpoint(
            **request_fields(
                body, {"network", "name", "ip", "aliases", "service"}, "endpoint", ("network", "name")
            )
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
        # Remote records its address hid (module docstring) are programmed before the address is free.
        steps += self._endpoint_reconcile_steps(ep.network, label)
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
