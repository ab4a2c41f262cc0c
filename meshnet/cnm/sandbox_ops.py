"""Sandbox operations of the CNM controller (pure): create/delete, join/leave and attach, with undo.

Theory of operation (libnetwork.md 1.5-1.6). A sandbox is this host's own state: every change is a
``Local`` step (the in-memory sandbox), then ``sandboxes.json`` (``PersistSandboxes``), then the
dataplane (``Reconcile`` of the namespaces concerned), so a crash leaves the file ahead of the kernel and
the reconciler converges it.

- sandbox create: local state -> ``sandboxes.json`` -> dataplane (the namespace, ``lo`` up) when meshnet
  manages the namespace (an adopted ``netns`` path is only recorded).
- join: local state (interface name) -> ``sandboxes.json`` -> dataplane (overlay namespace on the first
  join, veth, addresses) -> endpoint entry with its sandbox (libnetwork: driver Join before the table).
- leave: local state -> ``sandboxes.json`` -> dataplane (veth gone; the overlay namespace after the last
  leave) -> endpoint entry without sandbox.
- sandbox delete: leave every joined endpoint (last joined first), then the sandbox, then (by default,
  as ``docker rm`` does) delete the endpoints it had (``endpoint_ops`` steps).
- attach: endpoint create, sandbox create if missing, join: one operation, all or nothing (the endpoint
  first, so peers program its record while this host creates and plugs the sandbox).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshnet.dataplane.ops import valid_netns
from meshnet.overlay.view import sandbox_netns

from .endpoint_ops import EndpointOps
from .errors import InUse, InvalidRequest, NameConflict, NotFound
from .records import EndpointRecord
from .sandboxes import Sandbox
from .steps import Operation, PutEndpoint, Reconcile, Step
from .validation import NETNS_MAX, need_name, need_str, request_fields

__all__ = ["AttachResult", "SandboxOps"]


@dataclass(frozen=True, slots=True)
class AttachResult:
    """What ``attach`` made: the sandbox (joined), the endpoint, and whether the sandbox was new."""

    sandbox: Sandbox
    endpoint: EndpointRecord
    created_sandbox: bool


class SandboxOps(EndpointOps):
    """Sandbox create/delete, ``join``/``leave`` and ``attach`` (module docstring)."""

    def _new_sandbox(self, name: object, netns: object, now: float) -> Sandbox:
        name = need_name(name, "sandbox name")
        for sb in self._sandboxes.values():
            if sb.name == name:
                raise NameConflict(f"sandbox name {name!r} is taken (sandbox {sb.id})")
        if netns is None:
            path = sandbox_netns(self.config.netns_prefix, name)
            if len(path) > NETNS_MAX or not valid_netns(path):
                raise InvalidRequest(f"sandbox name {name!r} is too long for a namespace name ({path})")
            managed = True
        else:
            path = need_str(netns, "netns")
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
        return self.create_sandbox(**request_fields(body, {"name", "netns"}, "sandbox", ("name",)), now=now)

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
        sb_name = need_str(sandbox, "sandbox")
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
        return self.attach(**request_fields(body, allowed, "attach", ("network", "sandbox")), now=now)
