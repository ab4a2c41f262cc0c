"""The CNM controller's state (pure): the table mirror, this host's sandboxes, lookups, ids, step helpers.

Theory of operation. ``ControllerState`` holds what one host knows of the CNM: a mirror of the
replicated tables (``networks``; ``endpoint_table`` of the networks this host has joined in NetworkDB),
fed by the runtime from NetworkDB watch events (``apply_network_entry``/``apply_endpoint_entry``; a
malformed value is counted and dropped, never raised), and this host's sandboxes (its own state, saved in
``sandboxes.json``, whose copies of joined endpoints' records stand in until the tables have them).

Reads resolve references: an exact id first, then the name; several networks with one name (created
concurrently on two hosts) resolve to the smallest ``(created, id)``. Ids are 24 lowercase hex
characters from the injected ``random.Random``. The step helpers (``_op``, ``_persist``,
``_set_sandbox``...) are what the operation modules (``network_ops``, ``endpoint_ops``, ``sandbox_ops``)
build their ``Operation``s from; ``_op`` also gives each operation its mirror hook and its rollback tail.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshnet.core.errors import DecodeError
from meshnet.overlay.view import HostView, LocalSandbox, overlay_netns

from .errors import NotFound
from .records import EndpointRecord, NetworkRecord, decode_endpoint, decode_network
from .sandboxes import Sandbox, decode_sandbox_state, encode_sandboxes
from .steps import (
    Action,
    DeleteEndpoint,
    DeleteNetwork,
    DetachNetwork,
    Local,
    Operation,
    PersistSandboxes,
    PutEndpoint,
    PutNetwork,
    Reconcile,
    Step,
)
from .validation import need_str

__all__ = ["CnmConfig", "ControllerState"]


@dataclass(frozen=True, slots=True)
class CnmConfig:
    """This host as the CNM sees it: node name, data-path (VTEP) address, namespace prefix, underlay MTU."""

    host: str
    vtep: str
    netns_prefix: str = "mn-"
    underlay_mtu: int = 1500


class ControllerState:
    """One host's CNM state, its lookups and the helpers operations are built from (module docstring)."""

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
        need_str(ref, "network")
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
        need_str(ref, "endpoint")
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
        need_str(ref, "sandbox")
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

    def _find_local(self, ep_id: str) -> EndpointRecord | None:
        for eps in self._endpoints.values():
            ep = eps.get(ep_id)
            if ep is not None:
                return ep
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
