"""A pure world for driving CNM operations: a fake IPAM, NetworkDB tables as dicts, a MemoryDataplane.

``World.run(op, fail_at=k)`` executes the operation's external actions in order and makes the k-th one
fail (``after=True``: the k-th one takes effect and *then* reports failure, as a partial dataplane apply
does; only for ``Reconcile``, as the other executors are atomic), so rollback can be checked at every step. ``World.fingerprint()`` is everything a failed operation
must leave unchanged.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any

from meshnet.cnm import (
    AllocateAddress,
    AttachNetwork,
    CnmConfig,
    Controller,
    DeleteEndpoint,
    DeleteNetwork,
    DetachNetwork,
    IpamCreateNetwork,
    IpamDeleteNetwork,
    Operation,
    PersistSandboxes,
    PutEndpoint,
    PutNetwork,
    Reconcile,
    ReleaseAddress,
    encode_endpoint,
    encode_network,
)
from meshnet.dataplane import MemoryDataplane
from meshnet.overlay import desired, plan


class Injected(Exception):
    """The failure a test injects."""


@dataclass
class Subnet:
    subnet: str
    gateway: str


@dataclass
class NetCfg:
    vni: int
    subnets: tuple[Subnet, ...]


@dataclass
class FakeIpam:
    """Enough IPAM for the CNM: networks with a VNI and subnets, addresses held by tag."""

    next_vni: int = 4097
    networks: dict[str, NetCfg] = field(default_factory=dict)
    held: dict[str, dict[str, str]] = field(default_factory=dict)  # network -> address -> tag

    def create(self, a: IpamCreateNetwork) -> NetCfg:
        subnets = a.subnets or ("10.9.0.0/24",)
        subs = []
        for s in subnets:
            net = ipaddress.ip_network(s)
            gw = (
                a.gateway
                if a.gateway and ipaddress.ip_address(a.gateway) in net
                else str(net.network_address + 1)
            )
            subs.append(Subnet(str(net), gw))
        cfg = NetCfg(self.next_vni, tuple(subs))
        self.next_vni += 1
        self.networks[a.network] = cfg
        self.held[a.network] = {}
        return cfg

    def allocate(self, a: AllocateAddress) -> str:
        cfg = self.networks[a.network]
        held = self.held[a.network]
        for s in cfg.subnets:
            net = ipaddress.ip_network(s.subnet)
            if (net.version == 6) != a.ipv6:
                continue
            if a.preferred is not None:
                if a.preferred in held:
                    raise Injected(f"{a.preferred} in use")
                held[a.preferred] = a.tag
                return a.preferred
            for host in net.hosts():
                text = str(host)
                if text != s.gateway and text not in held:
                    held[text] = a.tag
                    return text
        raise Injected("exhausted")

    def release(self, a: ReleaseAddress) -> None:
        held = self.held.get(a.network, {})
        if held.get(a.address) == a.tag:
            del held[a.address]


@dataclass
class World:
    """One host: controller, fake IPAM, tables, dataplane, the persisted sandboxes file."""

    host: str = "h1"
    vtep: str = "192.0.2.1"
    seed: int = 1
    ipam: FakeIpam = field(default_factory=FakeIpam)
    tables: dict[tuple[str, str, str], bytes] = field(default_factory=dict)  # (table, network, key)
    joined: set[str] = field(default_factory=set)
    persisted: bytes = b""
    dp: MemoryDataplane = field(default_factory=MemoryDataplane)
    log: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctl = Controller(CnmConfig(self.host, self.vtep), rng=random.Random(self.seed))
        self.persisted = self.ctl.sandboxes_json()

    def reconcile(self, namespaces: tuple[str, ...] | None = None) -> None:
        d = desired(self.ctl.host_view())
        scope = d.scope(self.dp.namespaces()) if namespaces is None else namespaces
        self.dp.apply(plan(d, self.dp.observe(scope), scope=scope))

    def execute(self, action: Any) -> Any:
        self.log.append(action)
        if isinstance(action, IpamCreateNetwork):
            return self.ipam.create(action)
        if isinstance(action, IpamDeleteNetwork):
            if self.ipam.held.get(action.network):
                raise Injected("addresses still held")
            self.ipam.networks.pop(action.network, None)
            self.ipam.held.pop(action.network, None)
            return None
        if isinstance(action, AttachNetwork):
            self.joined.add(action.network)
            return None
        if isinstance(action, DetachNetwork):
            self.joined.discard(action.network)
            self.ctl.forget_network(action.network)  # NetworkDB drops the network's entries
            return None
        if isinstance(action, AllocateAddress):
            return self.ipam.allocate(action)
        if isinstance(action, ReleaseAddress):
            return self.ipam.release(action)
        if isinstance(action, PutNetwork):
            self.tables[("networks", "", action.record.id)] = encode_network(action.record)
            return None
        if isinstance(action, DeleteNetwork):
            self.tables.pop(("networks", "", action.network), None)
            return None
        if isinstance(action, PutEndpoint):
            r = action.record
            self.tables[("endpoint_table", r.network, r.id)] = encode_endpoint(r)
            return None
        if isinstance(action, DeleteEndpoint):
            self.tables.pop(("endpoint_table", action.network, action.endpoint), None)
            return None
        if isinstance(action, PersistSandboxes):
            self.persisted = action.data
            return None
        if isinstance(action, Reconcile):
            self.reconcile(action.namespaces)
            return None
        raise AssertionError(f"unknown action {action!r}")

    def run(self, op: Operation, *, fail_at: int | None = None, after: bool = False) -> Any:
        """Drive ``op``; the ``fail_at``-th external action (0-based) fails. Returns the run."""
        r = op.start()
        index = 0
        while (action := r.next()) is not None:
            failing = not r.undoing and index == fail_at
            if not r.undoing:
                index += 1
            try:
                # Only a Reconcile (a dataplane apply) can fail half-done; the other executors are atomic.
                if failing and not (after and isinstance(action, Reconcile)):
                    raise Injected(f"injected at {index - 1}: {action!r}")
                result = self.execute(action)
                if failing:
                    raise Injected(f"injected after {index - 1}: {action!r}")
            except Exception as exc:
                r.failed(exc)
            else:
                r.done(result)
        r.external_count = index  # type: ignore[attr-defined]
        return r

    def ok(self, op: Operation) -> Any:
        r = self.run(op)
        if r.error is not None:
            raise r.error
        assert not r.undo_errors, r.undo_errors
        return r.result

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything an operation that failed must leave as it was."""
        return (
            dict(self.tables),
            {n: dict(h) for n, h in self.ipam.held.items()},
            sorted(self.ipam.networks),
            set(self.joined),
            self.persisted,
            self.ctl.sandboxes_json(),
            sorted((e.network, e.id, e.sandbox) for e in self.ctl.endpoints()),
            sorted(n.id for n in self.ctl.networks()),
            self.dp.dump(),
        )
