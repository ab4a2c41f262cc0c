"""The ``cnm`` service's operations: ordered steps with undo (mixed into ``CnmService``).

Theory of operation. Operations run one at a time under the service's lock (``_op``), as ordered steps
(``_Steps.run(name, do, undo)``): each step that changes something registers its undo, and a failure at
any step undoes the steps before it in reverse order, re-reconciles the kernel if a step touched it, and
raises the failure as an ``ApiError``: nothing is left half-done (docs/agent-services.md section 4).
The orders follow libnetwork (libnetwork.md 1.2-1.6):

- network create: IPAM (VNI, subnets) -> ``networks`` record; delete: refuse while any endpoint exists
  (the network's NetworkDB network is joined to see them) -> record -> IPAM.
- endpoint create: join the network's NetworkDB network -> IPAM attach -> addresses -> record (not
  joined yet: ``sandbox`` empty); delete: record -> release the addresses.
- sandbox create: namespace (unless handed in by path) -> ``sandboxes.json``.
- join: sandbox state (``sandboxes.json``) -> kernel (the reconcile builds overlay namespace, veth,
  addresses) -> record naming the sandbox (peers program it); leave: the reverse.
- sandbox delete: leave and delete each of its endpoints -> forget it -> delete its namespace.
- attach: sandbox (if missing) -> endpoint -> join, as one operation.

``fail_step = "op:step"`` makes the named step fail (tests); ``step_log`` lists the steps the last
operation ran, by that name.
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import trio

from meshnet.cnm.records import (
    TABLE_ENDPOINTS,
    TABLE_NETWORKS,
    EndpointRecord,
    NetworkRecord,
    SubnetRecord,
    encode_endpoint,
    encode_network,
    mac_from_ip,
)
from meshnet.core.errors import ApiError, DataplaneError, LocalProtocolError
from meshnet.dataplane import AddNetns, DelNetns, SetLinkUp
from meshnet.ipam import IpamError
from meshnet.overlay import sandbox_netns
from meshnet.runtime.cnm_model import NAME_RULE, SandboxEndpoint, SandboxInfo, netns_path, valid_name

__all__ = ["CnmOperations", "InjectedFailure"]

log = logging.getLogger("meshnet.cnm")


def _ipam_api_error(err: IpamError) -> ApiError:
    try:
        from meshnet.runtime.ipam_svc import ipam_api_error
    except ImportError:
        status = {"exhausted": 507, "unreachable": 503, "unknown": 503, "in_use": 409, "conflict": 409}
        return ApiError(status.get(err.code, 400), err.code, err.message)
    return ipam_api_error(err)


class InjectedFailure(Exception):
    """Raised by ``_Steps.run`` at the step named by ``CnmService.fail_step`` (tests)."""


class _Steps:
    """The steps of one operation and their undos (module docstring)."""

    def __init__(self, svc: Any, op: str) -> None:
        self.svc = svc
        self.op = op
        self.undos: list[tuple[str, Callable[[Any], Any], Any]] = []
        self.names: list[str] = []
        self.touched_kernel = False

    async def run(
        self,
        name: str,
        do: Callable[[], Any],
        undo: Callable[[Any], Any] | None = None,
        *,
        kernel: bool = False,
    ) -> Any:
        full = f"{self.op}:{name}"
        self.names.append(full)
        self.svc.step_log.append(full)
        if self.svc.fail_step == full:
            raise InjectedFailure(f"injected failure at {full}")
        self.touched_kernel |= kernel
        result = do()
        if inspect.isawaitable(result):
            result = await result
        if undo is not None:
            self.undos.append((name, undo, result))
        return result

    async def rollback(self) -> None:
        for name, undo, result in reversed(self.undos):
            try:
                out = undo(result)
                if inspect.isawaitable(out):
                    await out
            except Exception:
                self.svc.counters["rollback_errors"] += 1
                log.exception("undo of %s:%s failed (counted as rollback_errors)", self.op, name)
        self.undos.clear()


class CnmOperations:
    """The operations of ``CnmService`` (module docstring); the state and reads live there."""

    @contextlib.asynccontextmanager
    async def _op(self, name: str) -> AsyncIterator[_Steps]:
        if self.node is None or self.node.db is None:
            raise ApiError(503, "not_ready", "the agent is starting; try again")
        async with self._lock:
            if self.node.is_leaving:
                raise ApiError(503, "leaving", "the agent is leaving the cluster; no more changes")
            self._check_node()
            self.counters["operations"] += 1
            self.step_log.clear()
            steps = _Steps(self, name)
            try:
                yield steps
            except BaseException as exc:
                self.counters["operations_failed"] += 1
                with trio.CancelScope(shield=True):
                    await steps.rollback()
                    if steps.touched_kernel:
                        await self._reconcile_quietly()
                if isinstance(exc, ApiError):
                    raise
                if isinstance(exc, IpamError):
                    raise _ipam_api_error(exc) from None
                if isinstance(exc, DataplaneError):
                    raise ApiError(500, "dataplane", f"the kernel refused: {exc}") from None
                if isinstance(exc, LocalProtocolError):
                    raise ApiError(400, "invalid", str(exc)) from None
                if isinstance(exc, InjectedFailure):
                    raise ApiError(500, "injected", str(exc)) from None
                if isinstance(exc, OSError):
                    raise ApiError(500, "io", f"{exc}; nothing was changed") from None
                raise
            self._wake.set()

    def _new_id(self) -> str:
        return f"{self.rng.getrandbits(96):024x}"

    def _need_ipam(self) -> Any:
        if self.ipam is None:
            raise ApiError(503, "no_ipam", "this agent runs no IPAM service; networks and endpoints need it")
        return self.ipam

    async def create_network(
        self,
        name: str,
        *,
        subnets: Sequence[str] = (),
        gateway: str | None = None,
        ipv6: bool = False,
        mtu: int = 0,
        vxlan_port: int = 4789,
        labels: dict[str, str] | None = None,
        internal: bool = False,
        attachable: bool = True,
        created: float = 0.0,
    ) -> NetworkRecord:
        """Allocate VNI and subnets through IPAM, then publish the network record."""
        ipam = self._need_ipam()
        async with self._op("network_create") as steps:
            if any(n.name == name for n in self.networks()):
                raise ApiError(409, "exists", f"a network named {name!r} exists; pick another name")
            net_id = self._new_id()
            cfg = await steps.run(
                "ipam_create",
                lambda: ipam.create_network(net_id, subnets=tuple(subnets), ipv6=ipv6),
                lambda _: ipam.delete_network(net_id),
            )
            recs = tuple(SubnetRecord(str(s.subnet), str(s.gateway)) for s in cfg.subnets)
            if gateway is not None and gateway not in {s.gateway for s in recs}:
                raise ApiError(
                    400,
                    "not_supported",
                    f"gateway {gateway} is not the subnet's first address; custom gateways are not supported yet",
                )
            rec = NetworkRecord(
                id=net_id,
                name=name,
                vni=int(cfg.vni),
                subnets=recs,
                mtu=mtu,
                vxlan_port=vxlan_port,
                labels=dict(labels or {}),
                internal=internal,
                attachable=attachable,
                creator=self.me,
                created=created,
            )
            await steps.run(
                "write_record",
                lambda: self._put(TABLE_NETWORKS, "", net_id, encode_network(rec)),
                lambda _: self._delete(TABLE_NETWORKS, "", net_id),
            )
        return rec

    async def delete_network(self, ref: str) -> NetworkRecord:
        """Delete a network no endpoint (anywhere) is on: record first, then IPAM."""
        ipam = self._need_ipam()
        async with self._op("network_delete") as steps:
            net = self.network(ref)
            joined = await steps.run(
                "join_network",
                lambda: self._join(net.id),
                lambda j: self._leave_if_unused(net.id) if j else None,
            )
            eps = self.endpoints(net.id)
            if eps:
                where = ", ".join(sorted({f"{ep.name}@{ep.host}" for ep in eps})[:5])
                raise ApiError(
                    409, "in_use", f"network {net.name} has {len(eps)} endpoints ({where}); remove them first"
                )
            await steps.run(
                "delete_record",
                lambda: self._delete(TABLE_NETWORKS, "", net.id),
                lambda _: self._put(TABLE_NETWORKS, "", net.id, encode_network(net)),
            )
            await steps.run("ipam_delete", lambda: ipam.delete_network(net.id))
            if joined:
                self._leave_if_unused(net.id)
        return net

    async def _create_endpoint(
        self,
        steps: _Steps,
        net: NetworkRecord,
        name: str,
        ip: str | None,
        aliases: Sequence[str],
        service: str,
    ) -> EndpointRecord:
        ipam = self._need_ipam()
        ep_id = self._new_id()
        await steps.run(
            "join_network", lambda: self._join(net.id), lambda j: self._leave_if_unused(net.id) if j else None
        )
        if any(ep.name == name for ep in self.endpoints(net.id)):
            raise ApiError(409, "exists", f"network {net.name} has an endpoint named {name!r} already")
        versions = {ipaddress.ip_network(s.subnet).version for s in net.subnets}
        want = ipaddress.ip_address(ip) if ip else None
        if want is not None and not any(want in ipaddress.ip_network(s.subnet) for s in net.subnets):
            raise ApiError(400, "invalid", f"address {ip} is not in a subnet of network {net.name}")
        await steps.run("ipam_attach", lambda: ipam.attach(net.id))
        addrs: dict[int, str | None] = {4: None, 6: None}
        for version in (4, 6):
            if version not in versions:
                continue
            preferred = str(want) if want is not None and want.version == version else None
            addrs[version] = await steps.run(
                f"allocate_ipv{version}",
                lambda p=preferred, v=version: ipam.allocate(net.id, tag=ep_id, preferred=p, ipv6=v == 6),
                lambda a: ipam.release(net.id, a, tag=ep_id),
            )
        ipv4, ipv6 = addrs[4], addrs[6]
        if ipv4:
            mac = mac_from_ip(ipv4)
        else:
            packed = ipaddress.ip_address(ipv6 or "::").packed
            mac = "02:42:" + ":".join(f"{b:02x}" for b in packed[-4:])
        rec = EndpointRecord(
            id=ep_id,
            name=name,
            network=net.id,
            host=self.me,
            vtep=self.vtep,
            mac=mac,
            ipv4=ipv4,
            ipv6=ipv6,
            aliases=tuple(aliases),
            service=service,
        )
        await steps.run(
            "write_endpoint",
            lambda: self._put(TABLE_ENDPOINTS, net.id, ep_id, encode_endpoint(rec)),
            lambda _: self._delete(TABLE_ENDPOINTS, net.id, ep_id),
        )
        return rec

    async def create_endpoint(
        self,
        network: str,
        name: str,
        *,
        ip: str | None = None,
        aliases: Sequence[str] = (),
        service: str = "",
    ) -> EndpointRecord:
        """Join the network's tables, allocate addresses, publish the (not yet joined) endpoint."""
        async with self._op("endpoint_create") as steps:
            return await self._create_endpoint(steps, self.network(network), name, ip, aliases, service)

    def _local_endpoint(self, ref: str) -> EndpointRecord:
        rec = self.endpoint(ref)
        if rec.host != self.me:
            raise ApiError(409, "not_local", f"endpoint {rec.name} lives on {rec.host}; change it there")
        return rec

    async def _delete_endpoint(self, steps: _Steps, rec: EndpointRecord) -> None:
        ipam = self._need_ipam()
        await steps.run(
            "delete_endpoint",
            lambda: self._delete(TABLE_ENDPOINTS, rec.network, rec.id),
            lambda _: self._put(TABLE_ENDPOINTS, rec.network, rec.id, encode_endpoint(rec)),
        )
        for version, addr in ((4, rec.ipv4), (6, rec.ipv6)):
            if addr:
                await steps.run(
                    f"release_ipv{version}",
                    lambda a=addr: ipam.release(rec.network, a, tag=rec.id),
                    lambda _, a=addr, v=version: ipam.allocate(
                        rec.network, tag=rec.id, preferred=a, ipv6=v == 6
                    ),
                )
        self._leave_if_unused(rec.network)

    async def delete_endpoint(self, ref: str) -> EndpointRecord:
        """Delete a local endpoint that is not joined to a sandbox."""
        async with self._op("endpoint_delete") as steps:
            rec = self._local_endpoint(ref)
            if rec.sandbox:
                sb = self._sandboxes.get(rec.sandbox)
                label = sb.name if sb is not None else rec.sandbox
                raise ApiError(
                    409, "in_use", f"endpoint {rec.name} is joined to sandbox {label}; leave it first"
                )
            await self._delete_endpoint(steps, rec)
        return rec

    async def _create_sandbox(self, steps: _Steps, name: str, netns: str | None) -> SandboxInfo:
        if not valid_name(name):
            raise ApiError(400, "invalid", f"sandbox name {name!r}: {NAME_RULE}")
        if self._sandbox_named(name) is not None:
            raise ApiError(409, "exists", f"a sandbox named {name!r} exists on this host")
        if netns is not None:
            if not netns.startswith("/") or not os.path.exists(netns):
                raise ApiError(
                    400,
                    "invalid",
                    f"netns {netns!r} must be an existing namespace path (/run/netns/NAME, /proc/PID/ns/net)",
                )
            sb = SandboxInfo(self._new_id(), name, netns, netns, created=False)
        else:
            ns = sandbox_netns(self.prefix, name)
            sb = SandboxInfo(self._new_id(), name, ns, netns_path(ns), created=True)
            await steps.run(
                "create_netns",
                lambda: self._apply((AddNetns(name=ns), SetLinkUp(netns=ns, name="lo"))),
                lambda _: self._apply((DelNetns(name=ns),)),
                kernel=True,
            )
        await steps.run(
            "save",
            lambda: self._set_sandboxes({**self._sandboxes, sb.id: sb}),
            lambda _: self._set_sandboxes({k: v for k, v in self._sandboxes.items() if k != sb.id}),
        )
        return sb

    async def create_sandbox(self, name: str, *, netns: str | None = None) -> SandboxInfo:
        """A sandbox: a new namespace ``{prefix}sb-NAME``, or an existing one handed in by path."""
        async with self._op("sandbox_create") as steps:
            return await self._create_sandbox(steps, name, netns)

    def _replace_sandbox(self, sb: SandboxInfo) -> SandboxInfo:
        old = self._sandboxes[sb.id]
        self._set_sandboxes({**self._sandboxes, sb.id: sb})
        return old

    def _restore_sandbox(self, old: SandboxInfo) -> None:
        self._set_sandboxes({**self._sandboxes, old.id: old})

    async def _join_sandbox(self, steps: _Steps, sb: SandboxInfo, rec: EndpointRecord) -> SandboxEndpoint:
        if rec.sandbox:
            raise ApiError(
                409, "in_use", f"endpoint {rec.name} is joined to a sandbox already; leave it first"
            )
        net = self.network(rec.network)
        sep = SandboxEndpoint(
            id=rec.id,
            name=rec.name,
            network=net.id,
            network_name=net.name,
            ifname=sb.next_ifname(),
            mac=rec.mac,
            ipv4=rec.ipv4,
            ipv6=rec.ipv6,
            aliases=rec.aliases,
            service=rec.service,
            vni=net.vni,
            subnets=tuple((s.subnet, s.gateway) for s in net.subnets),
            mtu=self.mtu_of(net),
            vxlan_port=net.vxlan_port,
        )
        await steps.run(
            "add_to_sandbox",
            lambda: self._replace_sandbox(replace(sb, endpoints=(*sb.endpoints, sep))),
            self._restore_sandbox,
        )
        await steps.run("plug", self._reconcile, kernel=True)
        joined = replace(rec, sandbox=sb.id)
        await steps.run(
            "announce",
            lambda: self._put(TABLE_ENDPOINTS, rec.network, rec.id, encode_endpoint(joined)),
            lambda _: self._put(TABLE_ENDPOINTS, rec.network, rec.id, encode_endpoint(rec)),
        )
        return sep

    async def _leave_sandbox(self, steps: _Steps, sb: SandboxInfo, rec: EndpointRecord) -> None:
        await steps.run(
            "withdraw",
            lambda: self._put(
                TABLE_ENDPOINTS, rec.network, rec.id, encode_endpoint(replace(rec, sandbox=""))
            ),
            lambda _: self._put(TABLE_ENDPOINTS, rec.network, rec.id, encode_endpoint(rec)),
        )
        cur = self._sandboxes[sb.id]
        await steps.run(
            "unplug_state",
            lambda: self._replace_sandbox(
                replace(cur, endpoints=tuple(e for e in cur.endpoints if e.id != rec.id))
            ),
            self._restore_sandbox,
        )
        await steps.run("unplug", self._reconcile, kernel=True)

    async def join_endpoint(self, sandbox: str, endpoint: str) -> SandboxInfo:
        """Plug a local endpoint into a local sandbox (veth, addresses), then announce it to peers."""
        async with self._op("join") as steps:
            sb = self.sandbox(sandbox)
            await self._join_sandbox(steps, sb, self._local_endpoint(endpoint))
        return self._sandboxes[sb.id]

    async def leave_endpoint(self, sandbox: str, endpoint: str) -> SandboxInfo:
        """Withdraw the endpoint from peers, then unplug it from the sandbox."""
        async with self._op("leave") as steps:
            sb = self.sandbox(sandbox)
            rec = self._local_endpoint(endpoint)
            if sb.endpoint(rec.id) is None:
                raise ApiError(409, "not_joined", f"endpoint {rec.name} is not joined to sandbox {sb.name}")
            await self._leave_sandbox(steps, sb, rec)
        return self._sandboxes[sb.id]

    async def delete_sandbox(self, ref: str) -> SandboxInfo:
        """Leave and delete every endpoint of the sandbox, then remove it (and its namespace if meshnet made it)."""
        async with self._op("sandbox_delete") as steps:
            sb = self.sandbox(ref)
            for sep in sb.endpoints:
                rec = self._local_endpoint(sep.id) if self._has_endpoint(sep.id) else None
                if rec is None:
                    cur = self._sandboxes[sb.id]
                    await steps.run(
                        "forget_endpoint",
                        lambda c=cur, gone=sep.id: self._replace_sandbox(
                            replace(c, endpoints=tuple(e for e in c.endpoints if e.id != gone))
                        ),
                        self._restore_sandbox,
                    )
                    continue
                await self._leave_sandbox(steps, sb, rec)
                await self._delete_endpoint(steps, replace(rec, sandbox=""))
            last = self._sandboxes[sb.id]
            await steps.run(
                "forget",
                lambda: self._set_sandboxes({k: v for k, v in self._sandboxes.items() if k != sb.id}),
                lambda _: self._set_sandboxes({**self._sandboxes, sb.id: last}),
            )
            if sb.created:
                await steps.run("delete_netns", lambda: self._apply((DelNetns(name=sb.netns),)), kernel=True)
        return sb

    def _has_endpoint(self, endpoint_id: str) -> bool:
        return any(ep.id == endpoint_id for ep in self.endpoints())

    async def attach_container(
        self,
        network: str,
        sandbox: str,
        *,
        name: str | None = None,
        ip: str | None = None,
        aliases: Sequence[str] = (),
        service: str = "",
    ) -> tuple[SandboxInfo, EndpointRecord]:
        """One step: the sandbox (created if missing), an endpoint on ``network``, joined to it."""
        async with self._op("attach") as steps:
            net = self.network(network)
            sb = self._sandbox_named(sandbox) or next(
                (s for s in self._sandboxes.values() if s.id == sandbox), None
            )
            if sb is None:
                sb = await self._create_sandbox(steps, sandbox, None)
            ep_name = name or sb.name
            if not valid_name(ep_name):
                raise ApiError(400, "invalid", f"endpoint name {ep_name!r}: {NAME_RULE}")
            rec = await self._create_endpoint(steps, net, ep_name, ip, aliases, service)
            await self._join_sandbox(steps, self._sandboxes[sb.id], rec)
        return self._sandboxes[sb.id], replace(rec, sandbox=sb.id)
