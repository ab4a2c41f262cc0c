"""The ``cnm`` agent service: networks, endpoints and sandboxes, and the overlay reconcile loop.

Theory of operation (docs/agent-services.md is the contract; libnetwork.md 1.2-1.6 the ordering).

*Tables.* Networks are ``NetworkRecord``s in the global NetworkDB table ``networks``; endpoints are
``EndpointRecord``s in the table ``endpoint_table`` of the network's own NetworkDB network, written by the
endpoint's host. The service watches both (hidden entries included: a crashed agent's containers keep
working, so peers keep their FDB entries) and only *wakes* its task from the hooks; every read is a
level-triggered walk of the tables, every write a ``node.db_input`` from a task (an API request or the
loop). Sandboxes are local and live in ``STATE_DIR/sandboxes.json`` (``cnm_model``).

*Operations* (``create_network`` ... ``attach``) run one at a time under one lock, as ordered steps
(``_Steps``): each step that changes something registers its undo, and a failure at any step undoes the
steps before it in reverse order, re-reconciles the kernel, and raises the step's error as an
``ApiError``: nothing is left half-done. The order follows libnetwork: IPAM before the record that
announces an address; the kernel (Join) before the record that makes peers program FDB entries for it;
on the way out the record first. ``fail_step`` injects a failure at a named step (tests).

*Reconcile.* On every relevant table change, after every operation, and on a slow timer
(``reconcile_interval``, drift repair within one period), the loop builds a ``HostView``, computes the
desired state, observes the managed namespaces and applies the plan through the ``Dataplane`` in a
worker thread (the dataplane blocks). A refused plan is re-observed and re-planned (ops are idempotent).
After a restart with adopted sandboxes the view is *settling* (no FDB/neighbour entry is removed) until
the agent joined the cluster and ``settle_delay`` passed (at most ``reconcile_interval`` + 30 s), so
adoption never disturbs working connectivity.

*Read API for other services* (the DNS service):

- ``sandboxes() -> tuple[SandboxInfo, ...]``: frozen values, sorted by name; each with ``netns`` (as ops
  take it), ``netns_path`` (absolute) and its joined endpoints (``SandboxEndpoint``: id, name, network id
  and name, ifname, MAC, ipv4/ipv6, aliases, service).
- ``sandboxes_version``: an int that grows on every change of that tuple;
  ``await wait_sandboxes_changed(version) -> int`` returns the new version once it differs from
  ``version`` (at once if it already does).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from meshnet.cnm.records import (
    TABLE_ENDPOINTS,
    TABLE_NETWORKS,
    EndpointRecord,
    NetworkRecord,
    SubnetRecord,
    decode_endpoint,
    decode_network,
)
from meshnet.core.errors import ApiError, ConfigError, DataplaneError, DecodeError
from meshnet.dataplane import DelFdbEntry, DelNeighbour
from meshnet.gossip import events as gev
from meshnet.networkdb import EntryCreated, EntryDeleted, EntryUpdated, NetworkSynced
from meshnet.overlay import VXLAN_OVERHEAD, HostView, LocalSandbox, desired, is_managed_netns, plan
from meshnet.runtime.cnm_model import SandboxEndpoint, SandboxInfo, load_sandboxes, save_sandboxes
from meshnet.runtime.cnm_ops import CnmOperations
from meshnet.runtime.service import BaseService

__all__ = ["CnmService", "SandboxInfo", "SandboxEndpoint", "SandboxRef", "underlay_mtu"]

log = logging.getLogger("meshnet.cnm")

#: Attempts of one reconcile pass when the kernel refuses a plan (each re-observes and re-plans).
RECONCILE_ATTEMPTS = 3
_SIOCGIFADDR = 0x8915
_SIOCGIFMTU = 0x8921


@dataclass(frozen=True, slots=True)
class SandboxRef:
    """A local sandbox for the DNS service: ``netns`` is the absolute namespace path."""

    id: str
    name: str
    netns: str
    endpoints: tuple[str, ...]


def underlay_mtu(addr: str, default: int = 1500) -> int:
    """The MTU of the interface holding IPv4 ``addr`` in this namespace (``default`` if none does)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return default
    if ip.version != 4:
        return default
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        for _index, name in socket.if_nameindex():
            req = struct.pack("16s16x", name.encode()[:15])
            try:
                got = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:
                continue
            if socket.inet_ntoa(got[20:24]) == str(ip):
                mtu = fcntl.ioctl(s.fileno(), _SIOCGIFMTU, req)
                return int(struct.unpack("16si12x", mtu)[1])
    return default


class CnmService(CnmOperations, BaseService):
    """Networks, endpoints, sandboxes and the overlay of this host (module docstring)."""

    name = "cnm"
    api_prefixes = ("/v1/networks", "/v1/endpoints", "/v1/sandboxes", "/v1/attach")

    def __init__(
        self,
        dataplane: Any,
        *,
        state_dir: str | None = None,
        data_addr: str | None = None,
        netns_prefix: str = "mn-",
        reconcile_interval: float = 10.0,
        underlay_mtu: int | None = None,
        ipam: Any = None,
        rng: random.Random | None = None,
        sync_timeout: float = 5.0,
        settle_delay: float = 5.0,
    ) -> None:
        self.dp = dataplane
        self.state_dir = state_dir
        self.data_addr = data_addr
        self.prefix = netns_prefix
        self.reconcile_interval = reconcile_interval
        self._underlay_mtu = underlay_mtu
        self.ipam = ipam
        self.rng = rng if rng is not None else random.Random()
        self.sync_timeout = sync_timeout
        self.settle_delay = settle_delay
        self.node: Any = None
        self.vtep = ""
        self._sandboxes: dict[str, SandboxInfo] = {}
        self.sandboxes_version = 0
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._lock = trio.Lock()
        self._watches: set[Any] = set()
        self._started_at = 0.0
        self._joined_at: float | None = None
        self._adopted = False
        #: "op:step" at which the next operation fails (tests); ``step_log`` lists the steps run.
        self.fail_step: str | None = None
        self.step_log: list[str] = []
        self.last_error: str | None = None
        self._dropped: tuple[str, ...] = ()
        self._listeners: list[Callable[[], None]] = []
        self.counters: dict[str, int] = {
            "reconciles": 0,
            "reconcile_errors": 0,
            "ops_applied": 0,
            "bad_records": 0,
            "operations": 0,
            "operations_failed": 0,
            "rollback_errors": 0,
        }

    # -- hooks --

    def attach(self, node: Any) -> None:
        self.node = node
        if self.ipam is None:
            self.ipam = next((s for s in node.services if getattr(s, "name", "") == "ipam"), None)
        self.vtep = str(ipaddress.ip_address(self.data_addr or node.advertise_addr[0]))
        if self.state_dir is None:
            self.state_dir = node.db.settings.state_dir
        try:
            self._sandboxes = load_sandboxes(self.state_dir)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._adopted = any(sb.endpoints for sb in self._sandboxes.values())
        if self._underlay_mtu is None:
            self._underlay_mtu = underlay_mtu(self.vtep)
        core = node.db.core
        self._watches = {
            core.watch(table=TABLE_NETWORKS, network="", include_hidden=True),
            core.watch(table=TABLE_ENDPOINTS, include_hidden=True),
        }
        self._started_at = trio.current_time()
        if self._sandboxes:
            log.info("adopted %d sandboxes from %s", len(self._sandboxes), self.state_dir)

    def on_db_events(self, events: list[Any], now: float) -> None:
        for ev in events:
            kind = type(ev)
            if kind in (EntryCreated, EntryUpdated, EntryDeleted) and ev.watch_id in self._watches:
                self._wake.set()
                return
            if kind is NetworkSynced:
                self._wake.set()
                return

    def on_member_event(self, event: Any, now: float) -> None:
        if self._joined_at is not None or not isinstance(event, gev.JoinCompleted | gev.MemberJoined):
            return
        if isinstance(event, gev.JoinCompleted) or event.member.name != self.node.name:
            self._joined_at = now
            self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(self._next_wait()):
                await self._wake.wait()
            self._wake = trio.Event()
            async with self._lock:
                await self._reconcile_quietly()

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "sandboxes": len(self._sandboxes),
            "settling": self._settling(),
            "vtep": self.vtep,
            "last_error": self.last_error,
        }

    # -- read API (DNS service) --

    def sandboxes(self) -> tuple[SandboxInfo, ...]:
        """Every local sandbox, sorted by name (frozen values)."""
        return tuple(sorted(self._sandboxes.values(), key=lambda s: s.name))

    def local_sandboxes(self) -> tuple[SandboxRef, ...]:
        """The sandboxes as the DNS service reads them: id, name, ``netns`` (the absolute path) and the
        joined endpoint ids in join order."""
        return tuple(
            SandboxRef(sb.id, sb.name, sb.netns_path, tuple(ep.id for ep in sb.endpoints))
            for sb in self.sandboxes()
        )

    def add_sandbox_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` synchronously after every change of the local sandboxes (it must not raise
        or block)."""
        self._listeners.append(callback)

    async def wait_sandboxes_changed(self, version: int) -> int:
        """Wait until ``sandboxes_version`` differs from ``version``; return it."""
        while self.sandboxes_version == version:
            await self._changed.wait()
        return self.sandboxes_version

    def _set_sandboxes(self, new: dict[str, SandboxInfo]) -> None:
        """Save ``new`` to ``sandboxes.json``, then make it current (raises OSError, changing nothing)."""
        save_sandboxes(self.state_dir, new.values())
        self._sandboxes = new
        self.sandboxes_version += 1
        self._changed.set()
        self._changed = trio.Event()
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("a sandbox listener raised (ignored)")

    # -- reads of the tables --

    @property
    def me(self) -> str:
        return str(self.node.name)

    def _core(self) -> Any:
        return self.node.db.core

    def networks(self) -> list[NetworkRecord]:
        """Every network record this host sees (hidden ones included), sorted by (name, created, id)."""
        out = []
        for e in self._core().walk_table(TABLE_NETWORKS, "", include_hidden=True):
            try:
                rec = decode_network(e.value)
            except DecodeError:
                self.counters["bad_records"] += 1
                continue
            if rec.id == e.key:
                out.append(rec)
            else:
                self.counters["bad_records"] += 1
        return sorted(out, key=lambda r: (r.name, r.created, r.id))

    def endpoints(self, network: str | None = None) -> list[EndpointRecord]:
        """Endpoint records of the joined networks (or of one), hidden ones included, sorted."""
        core = self._core()
        nets = [network] if network is not None else [n for n in core.networks() if n]
        out = []
        for net in nets:
            if net not in core.networks():
                continue
            for e in core.walk_table(TABLE_ENDPOINTS, net, include_hidden=True):
                try:
                    rec = decode_endpoint(e.value)
                except DecodeError:
                    self.counters["bad_records"] += 1
                    continue
                if rec.id != e.key or rec.network != net:
                    self.counters["bad_records"] += 1
                    continue
                out.append(rec)
        return sorted(out, key=lambda r: (r.network, r.name, r.id))

    def network(self, ref: str) -> NetworkRecord:
        """The network with id ``ref``, else the oldest named ``ref``; ApiError 404 if none."""
        nets = self.networks()
        for n in nets:
            if n.id == ref:
                return n
        named = [n for n in nets if n.name == ref]
        if not named:
            raise ApiError(404, "not_found", f"no network {ref!r}; see meshnetctl network ls")
        return min(named, key=lambda r: (r.created, r.id))

    def endpoint(self, ref: str) -> EndpointRecord:
        """The endpoint with id ``ref``, else the one named ``ref`` (local ones first)."""
        eps = self.endpoints()
        for ep in eps:
            if ep.id == ref:
                return ep
        named = [ep for ep in eps if ep.name == ref]
        local = [ep for ep in named if ep.host == self.me]
        pick = local or named
        if not pick:
            raise ApiError(404, "not_found", f"no endpoint {ref!r} in the networks this host has joined")
        if len(pick) > 1:
            raise ApiError(409, "ambiguous", f"{len(pick)} endpoints are named {ref!r}; give the endpoint id")
        return pick[0]

    def sandbox(self, ref: str) -> SandboxInfo:
        for sb in self._sandboxes.values():
            if sb.id == ref:
                return sb
        for sb in self._sandboxes.values():
            if sb.name == ref:
                return sb
        raise ApiError(404, "not_found", f"no sandbox {ref!r} on this host; see meshnetctl sandbox ls")

    def _sandbox_named(self, name: str) -> SandboxInfo | None:
        return next((sb for sb in self._sandboxes.values() if sb.name == name), None)

    def mtu_of(self, net: NetworkRecord) -> int:
        return net.mtu or max(68, (self._underlay_mtu or 1500) - VXLAN_OVERHEAD)

    # -- NetworkDB writes (from tasks) --

    def _check_node(self) -> None:
        if self.node.fatal is not None:
            raise ApiError(503, "stopped", f"the agent is stopping: {self.node.fatal}")

    def _put(self, table: str, network: str, key: str, value: bytes) -> None:
        core = self._core()
        self.node.db_input(lambda now: core.put_entry(table, network, key, value, now=now))
        self._check_node()

    def _delete(self, table: str, network: str, key: str) -> None:
        core = self._core()
        if network not in core.networks() or core.get_entry(table, network, key, include_hidden=True) is None:
            return
        self.node.db_input(lambda now: core.delete_entry(table, network, key, now=now))
        self._check_node()

    async def _join(self, network: str) -> bool:
        """Join ``network``'s NetworkDB network (waiting up to ``sync_timeout`` for its sync); whether it
        was joined by this call."""
        db = self.node.db
        if network in db.core.networks():
            return False
        wait = db.expect_sync(network)
        self.node.db_input(lambda now: db.core.join_network(network, now=now))
        self._check_node()
        with trio.move_on_after(self.sync_timeout):
            await wait.done.wait()
        if not wait.done.is_set():
            db.forget_sync(network, wait)
        return True

    def _leave_if_unused(self, network: str) -> None:
        """Leave ``network``'s NetworkDB network when no local endpoint is on it and IPAM does not need it."""
        core = self._core()
        if network not in core.networks() or any(ep.host == self.me for ep in self.endpoints(network)):
            return
        needs = getattr(self.ipam, "needs_network", None)
        if needs is None or needs(network):
            return  # IPAM keeps (or may keep) records there; leaving would drop them cluster-wide
        self.node.db_input(lambda now: core.leave_network(network, now=now))

    # -- the dataplane --

    async def _apply(self, plan: tuple[Any, ...]) -> None:
        if plan:
            await trio.to_thread.run_sync(self.dp.apply, plan)
            self.counters["ops_applied"] += len(plan)

    def _existing(self) -> tuple[str, ...]:
        lister = getattr(self.dp, "namespaces", None)
        if lister is not None:
            names = list(lister())
        else:
            try:
                names = os.listdir("/run/netns")
            except OSError:
                names = []
        return tuple(sorted(n for n in names if is_managed_netns(self.prefix, n)))

    def _settling(self) -> bool:
        if not self._adopted or self.node is None:
            return False
        now = trio.current_time()
        if now >= self._started_at + self.reconcile_interval + 30.0:
            return False
        if self._joined_at is None and (self.node.seeds or not self.node.is_joined):
            return True
        joined_at = self._joined_at if self._joined_at is not None else self._started_at
        return now < joined_at + self.settle_delay

    def _next_wait(self) -> float:
        wait = self.reconcile_interval
        if self._adopted and self.node is not None:
            now = trio.current_time()
            ends = [self._started_at + self.reconcile_interval + 30.0]
            if self._joined_at is not None:
                ends.append(self._joined_at + self.settle_delay)
            for end in ends:
                if end > now:
                    wait = min(wait, end - now + 0.01)
        return wait

    def view(self) -> HostView:
        """This host's overlay view: the network and endpoint records it sees (hidden ones included) and
        its sandboxes. A local joined endpoint whose records have not arrived yet (a restart before the
        tables synced) is described from ``sandboxes.json``, so adoption keeps it as it is."""
        nets = {n.id: n for n in self.networks()}
        eps = self.endpoints()
        have = {ep.id for ep in eps}
        sandboxes = []
        for sb in self.sandboxes():
            sandboxes.append(
                LocalSandbox(
                    id=sb.id,
                    netns=sb.netns,
                    managed=sb.created,
                    interfaces=tuple((ep.id, ep.ifname) for ep in sb.endpoints),
                )
            )
            for ep in sb.endpoints:
                if ep.network not in nets:
                    nets[ep.network] = NetworkRecord(
                        id=ep.network,
                        name=ep.network_name or ep.network,
                        vni=ep.vni,
                        subnets=tuple(SubnetRecord(s, g) for s, g in ep.subnets),
                        mtu=ep.mtu,
                        vxlan_port=ep.vxlan_port,
                    )
                if ep.id not in have:
                    eps.append(
                        EndpointRecord(
                            id=ep.id,
                            name=ep.name,
                            network=ep.network,
                            host=self.me,
                            vtep=self.vtep,
                            mac=ep.mac,
                            ipv4=ep.ipv4,
                            ipv6=ep.ipv6,
                            aliases=ep.aliases,
                            sandbox=sb.id,
                            service=ep.service,
                        )
                    )
        return HostView.of(
            host=self.me,
            netns_prefix=self.prefix,
            underlay_mtu=self._underlay_mtu or 1500,
            vtep=self.vtep,
            networks=nets.values(),
            endpoints=eps,
            sandboxes=sandboxes,
        )

    async def _reconcile(self) -> int:
        """One reconcile pass (caller holds the lock): observe, plan, apply; re-plan after a refusal.
        While settling (after a restart) no FDB or neighbour entry is removed. Returns the number of ops
        applied; raises the last DataplaneError after RECONCILE_ATTEMPTS."""
        self.counters["reconciles"] += 1
        applied = 0
        for attempt in range(RECONCILE_ATTEMPTS):
            want = desired(self.view())
            if want.dropped and want.dropped != self._dropped:
                for line in want.dropped:
                    log.warning("overlay: %s", line)
                self.counters["bad_records"] += len(want.dropped)
            self._dropped = want.dropped
            snap = await trio.to_thread.run_sync(self.dp.observe, want.scope(self._existing()))
            ops = plan(want, snap)
            if self._settling():
                ops = tuple(op for op in ops if not isinstance(op, DelFdbEntry | DelNeighbour))
            if not ops:
                return applied
            try:
                await self._apply(ops)
            except DataplaneError as exc:
                if attempt == RECONCILE_ATTEMPTS - 1:
                    raise
                log.info("the kernel refused a plan (%s); re-observing", exc)
                continue
            applied += len(ops)
            log.debug("reconcile applied %d ops", len(ops))
        return applied

    async def _reconcile_quietly(self) -> None:
        try:
            await self._reconcile()
        except (DataplaneError, ValueError, OSError) as exc:
            self.counters["reconcile_errors"] += 1
            self.last_error = str(exc)
            log.warning("reconcile failed (retried within %.0fs): %s", self.reconcile_interval, exc)

    async def handle_api(self, node: Any, request: Any) -> Any:
        from meshnet.runtime import cnm_api

        return await cnm_api.handle(self, request)
