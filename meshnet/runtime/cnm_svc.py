"""The ``cnm`` agent service: the CNM controller and the overlay reconciler driven by trio.

Theory of operation (docs/agent-services.md is the contract). The decisions live in two pure cores:
``meshnet.cnm.Controller`` (validation, lookups, operations as ordered steps with undo) and
``meshnet.overlay`` (``desired(view)``, ``plan(desired, snapshot)``). This service feeds and executes them:

*Tables.* Two NetworkDB watches, hidden entries included (a crashed agent's containers keep working, so
peers keep their FDB entries): ``networks`` in the global network and every ``endpoint_table``. The hook
``on_db_events`` mirrors each change into the controller (pure, synchronous: no input is fed back into
the node) and wakes the reconcile loop. Writes are ``node.db_input`` calls from a task (an API request).

*Operations.* One at a time under one lock: the controller validates a request against its state and
returns an ``Operation``; ``_execute`` drives its ``Run``, carrying out each action (IPAM, NetworkDB,
``sandboxes.json``, the dataplane) and reporting done/failed; on a failure the run yields the undo actions
of the completed steps, last first, so nothing is left half-done, and the error becomes the API's
``ApiError``. ``fail_step = "KIND:STEP"`` makes that step fail (tests); ``step_log`` lists the steps of
the last operation.

*Reconcile.* On every mirrored change, after every operation that asks for it, and on a slow timer
(``reconcile_interval``: drift is repaired within one period), the loop turns the controller's
``host_view()`` into a desired state, observes the namespaces in scope and applies the plan through the
``Dataplane`` in a worker thread (the dataplane blocks); a refused plan is re-observed and re-planned.
A pass costs what changed: after table changes it observes and plans only the overlay namespaces of the
networks whose tables changed (``on_db_events`` marks them), an operation's ``Reconcile`` only the
namespaces it names; the slow timer, a network sync and the end of settling run the full pass (every
namespace, stale ones included), which repairs drift. When a pass programs a remote address that is new on
an existing ``vxlan0``, the local sandboxes plugged into that network are *kicked* once (``arp_kicks``): a
container that already asked for the address resolves it at once instead of after its ARP retransmit (1 s).
After a restart with adopted sandboxes the service is *settling* until it joined the cluster and
``settle_delay`` passed (bounded by ``reconcile_interval`` + 30 s): the tables may not have synced yet,
so no FDB or neighbour entry is removed; the local half of the overlay is described from the record copies
in ``sandboxes.json`` (``Controller.load_state``). Adoption never disturbs working connectivity.

*Data address.* ``vxlan_local(vtep)`` decides once at attach (and logs why) whether the data address is
an address of the agent's namespace: then it is every ``vxlan0``'s ``local`` (``HostView.vxlan_local``),
so VXLAN leaves from the advertised VTEP on a multi-homed host; otherwise (a NATed advertise address)
``local`` stays unset and routing picks the source. A change recreates ``vxlan0`` with its entries.

*NetworkDB networks.* ``AttachNetwork`` joins the network's NetworkDB network (and IPAM's attach) and
waits up to ``sync_timeout`` for its sync. ``DetachNetwork`` leaves it only when IPAM says it no longer
needs it (``ipam.needs_network(network)`` is False): IPAM keeps its block records in that network, and a
leave would delete them cluster-wide.

*Read API for other services* (the DNS service): ``local_sandboxes()`` (``SandboxRef``: id, name,
``netns`` as an absolute path, joined endpoint ids in join order) and ``add_sandbox_listener(cb)``
(called synchronously after every change of the local sandboxes; it must not raise or block);
``sandboxes_version`` and ``await wait_sandboxes_changed(version)`` for trio tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from meshnet.cnm import steps as st
from meshnet.cnm.controller import CnmConfig, Controller
from meshnet.cnm.errors import BadSandboxState, CnmError
from meshnet.cnm.records import TABLE_ENDPOINTS, TABLE_NETWORKS, encode_endpoint, encode_network
from meshnet.cnm.sandboxes import SANDBOXES_FILE
from meshnet.core.errors import ApiError, ConfigError, DataplaneError, LocalProtocolError
from meshnet.dataplane import AddNeighbour, DelFdbEntry, DelNeighbour
from meshnet.gossip import events as gev
from meshnet.ipam import IpamError
from meshnet.ipam.space import SubnetConfig
from meshnet.networkdb import EntryCreated, EntryDeleted, EntryUpdated, NetworkSynced
from meshnet.overlay import VXLAN, DesiredState, HostView, desired, is_managed_netns, plan
from meshnet.runtime.service import BaseService

__all__ = ["CnmService", "SandboxRef", "InjectedFailure", "underlay_mtu", "vxlan_local"]

log = logging.getLogger("meshnet.cnm")

#: Attempts of one reconcile pass when the kernel refuses a plan (each re-observes and re-plans).
RECONCILE_ATTEMPTS = 3
#: After a wake-up the loop waits this long, so a burst of table changes (a bulk sync) costs one pass.
RECONCILE_DEBOUNCE = 0.05
#: What a settling host holds back: remote entries the not yet synced tables do not mention (yet).
_HELD_WHILE_SETTLING = (DelFdbEntry, DelNeighbour)
#: At most this many (sandbox interface, address) ARP kicks per reconcile; more (a whole network's
#: endpoints arriving at once) are left to the kernel's own retry.
MAX_KICKS = 4096
_SIOCGIFADDR = 0x8915
_SIOCGIFMTU = 0x8921


@dataclass(frozen=True, slots=True)
class SandboxRef:
    """A local sandbox for the DNS service: ``netns`` is the absolute namespace path."""

    id: str
    name: str
    netns: str
    endpoints: tuple[str, ...]


class InjectedFailure(Exception):
    """The failure ``CnmService.fail_step`` injects (tests)."""


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


def is_local_address(addr: str) -> bool:
    """Whether IPv4 ``addr`` is an address of this namespace, as the kernel decides it for a VXLAN
    device's source (an address of an interface, or in a ``local`` route such as 127.0.0.0/8).

    A bind test (EADDRNOTAVAIL when not local), unless ``ip_nonlocal_bind`` is on here (then every bind
    succeeds): then a connect test, which is exact for interface addresses (the route to a local
    address has it as its source)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        try:
            with open("/proc/sys/net/ipv4/ip_nonlocal_bind") as fh:
                nonlocal_bind = fh.read().strip() != "0"
        except OSError:
            nonlocal_bind = False
        try:
            if not nonlocal_bind:
                s.bind((addr, 0))
                return True
            s.connect((addr, 9))
            return bool(s.getsockname()[0] == addr)
        except OSError:
            return False


def vxlan_local(vtep: str) -> tuple[str | None, str]:
    """The ``local`` (source address) of this host's VXLAN devices for data address ``vtep``, and why:
    ``vtep`` itself when it is an IPv4 address of this namespace (libnetwork sets the data-path address
    as the VXLAN device's local address), so multi-homed hosts and firewalls see VXLAN from the
    advertised VTEP; None (routing picks the source) when no interface here holds it (a NATed
    advertise address) or it is IPv6 (the overlay's VXLAN is IPv4)."""
    ip = ipaddress.ip_address(vtep)
    if ip.version != 4:
        return None, f"data address {vtep} is IPv6 (the overlay's VXLAN is IPv4): vxlan0 has no local address"
    if not is_local_address(str(ip)):
        return None, (
            f"data address {vtep} is not an address of this host (NATed?): vxlan0 has no local address, "
            "routing picks the source of VXLAN packets"
        )
    return str(ip), f"vxlan0 sends VXLAN packets from the data address {vtep} (local {vtep})"


def netns_path(netns: str) -> str:
    """An absolute path for a namespace as ops name it (a name under /run/netns, or a path)."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def arp_kicks(want: DesiredState, snap: Any) -> dict[tuple[str, str, str], str]:
    """The ARP kicks a plan for ``want`` against ``snap`` calls for: (sandbox netns, ifname, ip) -> MAC for
    every remote address that is new on an existing ``vxlan0`` (not yet in its neighbour table) and every
    local port already plugged (its veth in the overlay namespace) with an address of the same family.

    Why: a container that sent its first ARP for such an address before this host programmed it holds an
    INCOMPLETE entry and retries only after ``retrans_time`` (1 s); ``vxlan0``'s proxy answers from its
    table alone. A permanent entry written over the INCOMPLETE one sends the queued packets at once, and
    deleting it right after leaves the container's neighbour table to the kernel (the next packet ARPs and
    the proxy answers). A bare delete does not do: it reports the queued packets as "host unreachable"
    (tried in namespaces: ping stops; a TCP connect would fail)."""
    kicks: dict[tuple[str, str, str], str] = {}
    for ns, ov in want.overlays.items():
        state = snap.get(ns)
        if state is None or not ov.neighbours or not ov.ports:
            continue
        have = {n.ip for n in state.neighbours if n.dev == VXLAN}
        new = [(ip, mac) for ip, mac in ov.neighbours.items() if ip not in have]
        if not new:
            continue
        plugged = {link.name for link in state.links if link.kind == "veth"}
        for port in ov.ports:
            if port.name not in plugged:
                continue
            v6 = {":" in a for a in port.addresses}
            for ip, mac in new:
                if (":" in ip) in v6:
                    kicks[(port.sandbox_netns, port.ifname, ip)] = mac
    return kicks


def api_error(exc: BaseException) -> ApiError | None:
    """The API's answer for an operation's failure, or None for an unexpected one."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, CnmError):
        return ApiError(exc.status, exc.code, str(exc))
    if isinstance(exc, IpamError | LocalProtocolError):
        try:
            from meshnet.runtime.ipam_svc import ipam_api_error
        except ImportError:  # pragma: no cover - the agent always has it
            return ApiError(400, getattr(exc, "code", "invalid"), str(exc))
        return ipam_api_error(exc)
    if isinstance(exc, DataplaneError):
        return ApiError(500, "dataplane", f"the kernel refused: {exc}; nothing was changed")
    if isinstance(exc, InjectedFailure):
        return ApiError(500, "injected", str(exc))
    if isinstance(exc, OSError):
        return ApiError(500, "io", f"{exc}; nothing was changed")
    return None


class CnmService(BaseService):
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
        self.ctl: Controller | None = None
        self.vtep = ""
        #: ``vxlan0``'s source address (``vxlan_local(vtep)``, decided at attach); None: routing picks it.
        self.vxlan_local: str | None = None
        self.sandboxes_version = 0
        self._changed = trio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._wake = trio.Event()
        #: Networks whose tables changed since the last pass (None: a full pass is due).
        self._dirty: set[str] | None = None
        #: Network id -> its overlay namespace, as the passes made them (a partial pass deletes a stale one).
        self._overlay_ns: dict[str, str] = {}
        self._lock = trio.Lock()
        self._watches: dict[Any, str] = {}
        self._started_at = 0.0
        self._joined_at: float | None = None
        self._adopted = False
        self._dropped: tuple[str, ...] = ()
        #: "KIND:STEP" at which the next operation fails (tests); ``step_log`` lists the last one's steps.
        self.fail_step: str | None = None
        self.step_log: list[str] = []
        self.last_error: str | None = None
        self.counters: dict[str, int] = {
            "reconciles": 0,
            "reconciles_full": 0,
            "reconcile_errors": 0,
            "ops_applied": 0,
            "dropped_records": 0,
            "operations": 0,
            "operations_failed": 0,
            "rollback_errors": 0,
            "arp_kicks": 0,
            "arp_kick_errors": 0,
            "arp_kicks_skipped": 0,
        }

    # -- hooks --

    def attach(self, node: Any) -> None:
        self.node = node
        if self.ipam is None:
            self.ipam = next((s for s in node.services if getattr(s, "name", "") == "ipam"), None)
        if self.state_dir is None:
            self.state_dir = node.db.settings.state_dir
        self.vtep = str(ipaddress.ip_address(self.data_addr or node.advertise_addr[0]))
        if self._underlay_mtu is None:
            self._underlay_mtu = underlay_mtu(self.vtep)
        self.vxlan_local, why = vxlan_local(self.vtep)
        log.info("%s", why)
        self.ctl = Controller(
            CnmConfig(
                host=node.name, vtep=self.vtep, netns_prefix=self.prefix, underlay_mtu=self._underlay_mtu
            ),
            rng=random.Random(self.rng.getrandbits(64)),
        )
        self._load_state()
        sandboxes = self.ctl.sandboxes()
        self._adopted = any(sb.interfaces for sb in sandboxes)
        core = node.db.core
        self._watches = {
            core.watch(table=TABLE_NETWORKS, network="", include_hidden=True): TABLE_NETWORKS,
            core.watch(table=TABLE_ENDPOINTS, include_hidden=True): TABLE_ENDPOINTS,
        }
        self._started_at = trio.current_time()
        if sandboxes:
            log.info("adopted %d sandboxes from %s", len(sandboxes), self.state_dir)

    def _load_state(self) -> None:
        """Adopt ``sandboxes.json``: the sandboxes and the copies of their endpoints' and networks'
        records, which describe this host's overlay until the tables have synced (``Controller.load_state``)."""
        assert self.ctl is not None
        if self.state_dir is None:
            return
        path = os.path.join(self.state_dir, SANDBOXES_FILE)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}; fix its permissions") from None
        try:
            self.ctl.load_state(data)
        except BadSandboxState as exc:
            raise ConfigError(
                f"{path}: {exc}; fix or remove it (its containers are then forgotten)"
            ) from None

    def on_db_events(self, events: list[Any], now: float) -> None:
        assert self.ctl is not None
        for ev in events:
            kind = type(ev)
            if kind is EntryCreated or kind is EntryUpdated or kind is EntryDeleted:
                table = self._watches.get(ev.watch_id)
                if table is None:
                    continue
                value = None if kind is EntryDeleted else ev.value
                if table == TABLE_NETWORKS:
                    self.ctl.apply_network_entry(ev.key, value)
                    self._mark(ev.key)
                else:
                    self.ctl.apply_endpoint_entry(ev.network, ev.key, value)
                    self._mark(ev.network)
                self._wake.set()
            elif kind is NetworkSynced:
                self._dirty = None
                self._wake.set()

    def _mark(self, network: str) -> None:
        if self._dirty is not None:
            self._dirty.add(network)

    def on_member_event(self, event: Any, now: float) -> None:
        if self._joined_at is not None or not isinstance(event, gev.JoinCompleted | gev.MemberJoined):
            return
        if isinstance(event, gev.JoinCompleted) or event.member.name != self.node.name:
            self._joined_at = now
            self._dirty = None
            self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            timer = True
            with trio.move_on_after(self._next_wait()):
                await self._wake.wait()
                await trio.sleep(RECONCILE_DEBOUNCE)
                timer = False
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, set()
            async with self._lock:
                await self._reconcile_quietly(None if timer or dirty is None else dirty)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            **(self.ctl.stats() if self.ctl is not None else {}),
            "settling": self._settling(),
            "vtep": self.vtep,
            "last_error": self.last_error,
        }

    async def handle_api(self, node: Any, request: Any) -> Any:
        from meshnet.runtime import cnm_api

        return await cnm_api.handle(self, request)

    # -- read API (DNS service) --

    def local_sandboxes(self) -> tuple[SandboxRef, ...]:
        """The local sandboxes: id, name, absolute namespace path, joined endpoint ids in join order."""
        assert self.ctl is not None
        return tuple(
            SandboxRef(sb.id, sb.name, netns_path(sb.netns), sb.endpoints()) for sb in self.ctl.sandboxes()
        )

    def add_sandbox_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` synchronously after every change of the local sandboxes."""
        self._listeners.append(callback)

    async def wait_sandboxes_changed(self, version: int) -> int:
        """Wait until ``sandboxes_version`` differs from ``version``; return it."""
        while self.sandboxes_version == version:
            await self._changed.wait()
        return self.sandboxes_version

    def _sandboxes_changed(self) -> None:
        self.sandboxes_version += 1
        self._changed.set()
        self._changed = trio.Event()
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("a sandbox listener raised (ignored)")

    # -- operations --

    async def execute(self, make: Callable[[Controller], st.Operation]) -> Any:
        """Build an operation from the controller (under the lock, so it validates against the state
        its predecessors left) and carry it out; its result, or ``ApiError`` after a complete rollback."""
        if self.ctl is None or self.node is None or self.node.db is None:
            raise ApiError(503, "not_ready", "the agent is starting; try again")
        async with self._lock:
            if self.node.is_leaving:
                raise ApiError(503, "leaving", "the agent is leaving the cluster; no more changes")
            if self.node.fatal is not None:
                raise ApiError(503, "stopped", f"the agent is stopping: {self.node.fatal}")
            try:
                op = make(self.ctl)
            except CnmError as exc:
                raise ApiError(exc.status, exc.code, str(exc)) from None
            except TypeError as exc:  # a required field missing from the request body
                raise ApiError(400, "invalid", f"bad request: {exc}") from None
            self.counters["operations"] += 1
            before = self.ctl.sandboxes()
            op = self._with_injection(op)
            run = op.start()
            self.step_log = [f"{op.kind}:{name}" for name in op.step_names()]
            while (action := run.next()) is not None:
                try:
                    with trio.CancelScope(shield=run.undoing):
                        result = await self._act(action)
                except Exception as exc:
                    run.failed(exc)
                else:
                    run.done(result)
            for action, exc in run.undo_errors:
                self.counters["rollback_errors"] += 1
                log.warning("undo of %s failed during the rollback of %s: %s", action, op.kind, exc)
            for action, exc in run.warnings:
                log.info("%s: %s failed (best effort): %s", op.kind, type(action).__name__, exc)
            if self.ctl.sandboxes() != before:
                self._sandboxes_changed()
            self._wake.set()
            if run.error is not None:
                self.counters["operations_failed"] += 1
                err = api_error(run.error)
                if err is None:
                    raise run.error
                raise err
            return run.result

    def _with_injection(self, op: st.Operation) -> st.Operation:
        if self.fail_step is None or not self.fail_step.startswith(op.kind + ":"):
            return op
        name = self.fail_step.split(":", 1)[1]

        def fail() -> None:
            raise InjectedFailure(f"injected failure at {self.fail_step}")

        steps = tuple(
            dataclasses.replace(s, do=st.Local("injected", fail), best_effort=False) if s.name == name else s
            for s in op.steps
        )
        return dataclasses.replace(op, steps=steps)

    async def _act(self, action: Any) -> Any:
        """Carry out one action of an operation (``meshnet.cnm.steps``)."""
        ipam = self.ipam
        if isinstance(action, st.PutNetwork):
            return self._put(TABLE_NETWORKS, "", action.record.id, encode_network(action.record))
        if isinstance(action, st.DeleteNetwork):
            return self._delete(TABLE_NETWORKS, "", action.network)
        if isinstance(action, st.PutEndpoint):
            rec = action.record
            return self._put(TABLE_ENDPOINTS, rec.network, rec.id, encode_endpoint(rec))
        if isinstance(action, st.DeleteEndpoint):
            return self._delete(TABLE_ENDPOINTS, action.network, action.endpoint)
        if isinstance(action, st.PersistSandboxes):
            return await trio.to_thread.run_sync(self._write_sandboxes, action.data)
        if isinstance(action, st.Reconcile):
            return await self._reconcile(scope=action.namespaces)
        if isinstance(action, st.AttachNetwork):
            await self._need_ipam().attach(action.network)
            return await self._join(action.network)
        if isinstance(action, st.DetachNetwork):
            return self._leave_if_unneeded(action.network)
        if isinstance(action, st.IpamCreateNetwork):
            ipam = self._need_ipam()
            cfg = await ipam.create_network(
                action.network, subnets=_with_gateway(action.subnets, action.gateway), ipv6=action.ipv6
            )
            if action.gateway is not None and action.gateway not in {str(s.gateway) for s in cfg.subnets}:
                # The controller checked the gateway lies in one given subnet; IPAM must have kept it.
                await ipam.delete_network(action.network)
                raise ApiError(500, "internal", f"IPAM did not keep the gateway {action.gateway}")
            return cfg
        if isinstance(action, st.IpamDeleteNetwork):
            return await self._need_ipam().delete_network(action.network)
        if isinstance(action, st.AllocateAddress):
            return await self._need_ipam().allocate(
                action.network, tag=action.tag, preferred=action.preferred, ipv6=action.ipv6
            )
        if isinstance(action, st.ReleaseAddress):
            return await self._need_ipam().release(action.network, action.address, tag=action.tag)
        raise TypeError(f"unknown CNM action {action!r}")

    def _need_ipam(self) -> Any:
        if self.ipam is None:
            raise ApiError(503, "no_ipam", "this agent runs no IPAM service; networks and endpoints need it")
        return self.ipam

    def _write_sandboxes(self, data: bytes) -> None:
        """``sandboxes.json`` replaced atomically (temporary file, fsync, rename, fsync the directory)."""
        if self.state_dir is None:
            return
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.state_dir, SANDBOXES_FILE)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- NetworkDB --

    def _check_node(self) -> None:
        if self.node.fatal is not None:
            raise ApiError(503, "stopped", f"the agent is stopping: {self.node.fatal}")

    def _put(self, table: str, network: str, key: str, value: bytes) -> None:
        core = self.node.db.core
        self.node.db_input(lambda now: core.put_entry(table, network, key, value, now=now))
        self._check_node()

    def _delete(self, table: str, network: str, key: str) -> None:
        core = self.node.db.core
        if network not in core.networks() or core.get_entry(table, network, key, include_hidden=True) is None:
            return
        self.node.db_input(lambda now: core.delete_entry(table, network, key, now=now))
        self._check_node()

    async def _join(self, network: str) -> bool:
        """Join ``network``'s NetworkDB network, waiting up to ``sync_timeout`` for its sync."""
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

    def _leave_if_unneeded(self, network: str) -> bool:
        core = self.node.db.core
        needs = getattr(self.ipam, "needs_network", None)
        if network not in core.networks() or needs is None or needs(network):
            return False  # IPAM keeps (or may keep) records there; a leave would drop them cluster-wide
        self.node.db_input(lambda now: core.leave_network(network, now=now))
        assert self.ctl is not None
        self.ctl.forget_network(network)
        return True

    # -- reconcile --

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

    def _host_view(self) -> HostView:
        """The controller's view with this host's ``vxlan_local``."""
        assert self.ctl is not None
        return dataclasses.replace(self.ctl.host_view(), vxlan_local=self.vxlan_local)

    async def _reconcile(
        self, *, networks: set[str] | None = None, scope: tuple[str, ...] | None = None
    ) -> int:
        """One reconcile pass (the caller holds the lock): observe, plan, apply; re-plan after a refusal.
        Full by default (every namespace of the desired state and every managed one that exists);
        ``scope`` limits observe and plan to those namespaces (an operation's ``Reconcile``), ``networks``
        to the overlay namespaces of those networks (table changes: their remote entries, or the whole
        overlay when the network appeared or went), so a change costs what it touches, not every
        namespace of the host. While settling no FDB or neighbour entry is removed. Returns the number
        of ops applied; raises the last DataplaneError after RECONCILE_ATTEMPTS."""
        assert self.ctl is not None
        self.counters["reconciles"] += 1
        applied = 0
        kicks: dict[tuple[str, str, str], str] = {}
        for attempt in range(RECONCILE_ATTEMPTS):
            want = desired(self._host_view())
            if want.dropped != self._dropped:
                for line in want.dropped:
                    log.warning("overlay: %s", line)
                self.counters["dropped_records"] += len(want.dropped)
                self._dropped = want.dropped
            if networks is not None:
                names = self._overlays_of(want, networks)
                if not names:
                    break
            elif scope is not None:
                names = tuple(sorted(set(scope)))
            else:
                names = want.scope(self._existing())
            snap = await trio.to_thread.run_sync(self.dp.observe, names)
            if networks is None and scope is None:
                self.counters["reconciles_full"] += 1
                ops = plan(want, snap)
                self._overlay_ns = {ov.network: ns for ns, ov in want.overlays.items()}
            else:
                ops = plan(want, snap, scope=names)
            if self._settling():
                ops = tuple(op for op in ops if not isinstance(op, _HELD_WHILE_SETTLING))
            if not ops:
                break
            kicks.update(arp_kicks(want, snap))
            try:
                await trio.to_thread.run_sync(self.dp.apply, ops)
            except DataplaneError as exc:
                if attempt == RECONCILE_ATTEMPTS - 1:
                    raise
                log.info("the kernel refused a plan (%s); re-observing", exc)
                continue
            self.counters["ops_applied"] += len(ops)
            applied += len(ops)
        await self._kick(kicks)
        return applied

    async def _kick(self, kicks: dict[tuple[str, str, str], str]) -> None:
        """Make local sandboxes resolve remote addresses that were just programmed at once (``arp_kicks``):
        one ``AddNeighbour`` + ``DelNeighbour`` pair per (sandbox interface, address), once. Best effort: a
        failure (a container's namespace went away meanwhile) is counted; the kernel's own ARP retry remains."""
        if not kicks:
            return
        if len(kicks) > MAX_KICKS:
            self.counters["arp_kicks_skipped"] += len(kicks)
            return
        ops: list[Any] = []
        for (netns, dev, ip), mac in sorted(kicks.items()):
            ops.append(AddNeighbour(netns=netns, dev=dev, ip=ip, mac=mac))
            ops.append(DelNeighbour(netns=netns, dev=dev, ip=ip))
        try:
            await trio.to_thread.run_sync(self.dp.apply, tuple(ops))
        except (DataplaneError, ValueError, OSError) as exc:
            self.counters["arp_kick_errors"] += 1
            log.info(
                "ARP kick of %d sandbox addresses failed (the kernel retries by itself): %s", len(kicks), exc
            )
            return
        self.counters["arp_kicks"] += len(kicks)

    def _overlays_of(self, want: DesiredState, networks: set[str]) -> tuple[str, ...]:
        """The overlay namespaces of ``networks``: wanted now, or made by an earlier pass (to go)."""
        names = set()
        for ns, ov in want.overlays.items():
            if ov.network in networks:
                names.add(ns)
                self._overlay_ns[ov.network] = ns
        for network in networks:
            old = self._overlay_ns.get(network)
            if old is not None and old not in want.overlays:
                names.add(old)
                del self._overlay_ns[network]
        return tuple(sorted(names))

    async def _reconcile_quietly(self, networks: set[str] | None = None) -> None:
        try:
            await self._reconcile(networks=networks)
        except (DataplaneError, ValueError, OSError) as exc:
            self.counters["reconcile_errors"] += 1
            self.last_error = str(exc)
            log.warning("reconcile failed (retried within %.0fs): %s", self.reconcile_interval, exc)

    def now(self) -> float:
        """Wall-clock time for records (``created``)."""
        return time.time()


def _with_gateway(subnets: tuple[str, ...], gateway: str | None) -> list[Any]:
    """The subnets for ``IpamService.create_network``: the one containing ``gateway`` as a ``SubnetConfig``
    carrying it (IPAM then reserves it instead of the first usable address), the others as given."""
    if gateway is None:
        return list(subnets)
    gw = ipaddress.ip_address(gateway)
    out: list[Any] = []
    for subnet in subnets:
        net = ipaddress.ip_network(subnet, strict=False)
        out.append(
            SubnetConfig.make(subnet, gateway=gateway) if gw.version == net.version and gw in net else subnet
        )
    return out
