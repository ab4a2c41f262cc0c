"""The IPAM service of the agent: the pure ``meshnet.ipam.Ipam`` core driven by trio beside NetworkDB.

Theory of operation (docs/agent-services.md sections 1, 4, 5; the core's wiring is in the docstring of
``meshnet/ipam/core.py``). The service owns one ``Ipam`` core and four kinds of work, all in trio tasks of
its ``run`` nursery, never in a hook:

- *Inputs.* The hooks ``on_db_events``/``on_member_event`` run inside the node's drive step and may not
  feed the node, so they only queue closures (``_inbox``) and wake the inbox task, which calls the core
  and then *pumps* it. The operations (``allocate``, ``create_network``, ...) call the core directly from
  the caller's task and pump at once.
  NetworkDB -> core: every ``ipam.*`` entry (one watch per table, ``include_hidden``: a failed owner's
  records are the truth about its blocks) -> ``handle_record``; ``NetworkSynced`` -> ``network_synced``;
  ``ClusterIdSet`` -> ``set_cluster_id``; ``RequestReceived`` whose payload starts with ``FRAME_PREFIX``
  -> ``receive_message``. Gossip -> core: ``MemberJoined``/``MemberUpdated`` (alive), ``MemberFailed``,
  ``MemberLeft``/``MemberReaped`` (left) are verdicts on a *host*; the core hears them about that host's
  identities (see "Identities" below).
- *Pump* (``_pump``, after every input): ``persists_to_write`` go to the persister; ``writes_to_send``
  become ``put_entry``/``delete_entry`` (joining the write's network first) and ``messages_to_send``
  become ``NetworkDB.request`` (one ``db_input`` step for all of them); result events resolve the
  waiting operation; the timer is re-armed to ``next_deadline``.
- *Persister.* The write-ahead order is the safety argument (ipam.md 3.6): the core gates every output
  behind the ``Persist`` that justifies it, and the persister calls ``persisted(seq)`` only after the
  records are appended to ``STATE_DIR/ipam/ipam.log`` durably (``IpamStore.append`` in a worker thread;
  several persists share one write when they queue up: group commit). A failed write is retried and
  never acknowledged, so nothing that depends on it leaves the host.
- *Timer.* One task sleeps until ``next_deadline`` and calls ``handle_timer``.

Direct messages: the core's ``SendMessage``s become never-answered ``NetworkDB.request``s to the
destination identity's host, one per pump and identity (framing, checks and counters in
``meshnet/runtime/ipam_wire.py``).

Identities (ipam.md 3.10): the IPAM identity is one agent life (``HOST~xxxxxxxx``), not the host; how
the boundary translates records, verdicts and predecessors between hosts and identities is in
``meshnet/runtime/ipam_identity.py``.

The founder of the cluster (no ``--join`` and no IPAM history) believes the VNI and pool spaces. The
global tables count as synced for the core when the node founded the cluster, or
``global_sync_timeout`` seconds after its first peer appeared (NetworkDB reports a sync only for joins
made while peers are known).

State files (``STATE_DIR/ipam/``, format 1: snapshot + append-only log, the directory the agent's,
mode 0700, locked by the agent): ``meshnet/runtime/ipam_store.py``.

API (``/v1/ipam``, JSON): the routes and their answers are listed in ``meshnet/runtime/ipam_api.py``.

The operations used by ``CnmService`` (docs/agent-services.md section 1) raise the core's ``IpamError``
subclasses within the core's budget, or ``LocalProtocolError`` for bad input (nothing changed).
``ipam_api_error`` maps both to ``ApiError``. ``attach`` is both the service hook (``attach(node)``,
synchronous) and the network attach of the contract (``await attach(network_id)``); ``attach_network``
is the unambiguous name of the latter. ``delete_network`` is a no-op: the core has no network deletion
yet (addresses are released per endpoint; the blocks and the VNI stay owned).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio

from meshnet.core.errors import ApiError, ConfigError, LocalProtocolError
from meshnet.gossip import events as gev
from meshnet.ipam import (
    TABLE_BLOCK,
    TABLE_NETCFG,
    TABLE_NODE,
    TABLE_RETIRED,
    Alarm,
    Allocated,
    Ipam,
    IpamConfig,
    IpamError,
    LeaveCompleted,
    NetConfig,
    NetworkCreated,
    OperationFailed,
    Persist,
    Reclaimed,
    SubnetConfig,
    Unknown,
)
from meshnet.ipam.state import Identity
from meshnet.networkdb import (
    ClusterIdSet,
    EntryCreated,
    EntryUpdated,
    NetworkSynced,
    RequestReceived,
)
from meshnet.runtime.ipam_api import handle_ipam_api, ipam_api_error, netcfg_json
from meshnet.runtime.ipam_identity import IdentityBoundary
from meshnet.runtime.ipam_store import IpamStore
from meshnet.runtime.ipam_wire import (
    BATCH_MARGIN,
    FRAME_PREFIX,
    RELIABLE_ABOVE,
    decode_request,
    encode_requests,
    identity_host,
)
from meshnet.runtime.service import BaseService

__all__ = [
    "IpamService",
    "IpamStore",
    "ipam_api_error",
    "netcfg_json",
    "FRAME_PREFIX",
    "TABLE_IDENTITY",
    "encode_requests",
    "decode_request",
    "identity_host",
]

log = logging.getLogger("meshnet.ipam")

#: The table of the service's own records: key = host (gossip name), value = that host's current IPAM
#: identity name (UTF-8), written by the host itself (NetworkDB's owner authority makes a restarted
#: host's value win over its previous life's).
TABLE_IDENTITY = "ipam.identity"
#: Tables the service watches (hidden entries included).
TABLES = (TABLE_BLOCK, TABLE_NETCFG, TABLE_RETIRED, TABLE_NODE)
PERSIST_RETRY_INTERVAL = 1.0
#: Operation durations kept per kind for ``stats()`` (the benchmark reads them).
LATENCY_SAMPLES = 4096
#: Slack over the core's own budget before an operation's wait gives up (the core never hangs).
_OP_SLACK = 5.0


# ---------------------------------------------------------------------- helpers


class _Pending:
    """An operation waiting for its result event."""

    __slots__ = ("done", "event")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.event: Any = None


def _percentiles(samples: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of durations in seconds, as milliseconds."""
    if not samples:
        return {"n": 0}
    ms = sorted(x * 1000 for x in samples)

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))], 3)

    return {"n": len(ms), "p50": q(0.5), "p99": q(0.99), "max": round(ms[-1], 3)}


# ---------------------------------------------------------------------- the service


class IpamService(IdentityBoundary, BaseService):
    """Manager-free IPAM in the agent (see the module docstring)."""

    name = "ipam"
    api_prefixes = ("/v1/ipam",)

    def __init__(
        self,
        config: IpamConfig | None = None,
        *,
        rng: random.Random | None = None,
        global_sync_timeout: float = 1.0,
        store_class: type[IpamStore] | None = None,
    ) -> None:
        """``store_class``: the state files' class (tests inject a slow or failing disk with it)."""
        self.config = config if config is not None else IpamConfig()
        self._store_class = store_class or IpamStore
        self._rng = rng
        self.global_sync_timeout = global_sync_timeout
        self.node: Any = None
        self.core: Ipam | None = None
        self.store: IpamStore | None = None
        self._watches: set[Any] = set()
        self._inbox: deque[Callable[[float], Any]] = deque()
        self._wake = trio.Event()
        self._persist_queue: list[Persist] = []
        self._persist_wake = trio.Event()
        self._ops: dict[int, _Pending] = {}
        self._deadline = math.inf
        self._timer_scope: trio.CancelScope | None = None
        self._timer_kick = trio.Event()
        self._synced: set[str] = set()
        self._sync_waits: dict[str, trio.Event] = {}
        self._global_synced = False
        self._founder = False
        self._running = False
        #: identity name -> host (gossip name), from verified ``ipam.node`` records and ``ipam.identity``
        self._host_by_ident: dict[str, str] = {}
        #: host -> the identity names known on it; host -> its current identity (``ipam.identity``)
        self._idents: dict[str, set[str]] = {}
        self._current: dict[str, str] = {}
        #: host -> gossip verdict (alive | failed | left); identity -> the verdict the core was told
        self._gossip: dict[str, str] = {}
        self._told: dict[str, str] = {}
        #: names of this host's earlier identities already shown to the core (predecessor adoption)
        self._predecessors: set[str] = set()
        #: identities whose node record the core has (from NetworkDB, or made here for a predecessor)
        self._noded: set[str] = set()
        self._identity_watch: Any = None
        self.persist_error: str | None = None
        #: the latest durations (s) of successful operations, by kind (``stats()["latency_ms"]``)
        self._latency: dict[str, deque[float]] = {}
        self.counters: dict[str, int] = {
            "inputs": 0,
            "input_errors": 0,
            "persist_batches": 0,
            "persists": 0,
            "persist_errors": 0,
            "compactions": 0,
            "writes": 0,
            "write_errors": 0,
            "messages_sent": 0,
            "requests_sent": 0,
            "send_errors": 0,
            "bad_batches": 0,
            "messages_received": 0,
            "misaddressed_messages": 0,
            "foreign_messages": 0,
            "foreign_records": 0,
            "undeliverable_messages": 0,
            "predecessors_found": 0,
            "alarms": 0,
        }

    # ------------------------------------------------------------------ hooks

    def attach(self, target: Any) -> Any:  # type: ignore[override]
        """Hook ``attach(node)`` (synchronous); or ``await attach(network_id)`` (the contract's network
        attach, see ``attach_network``)."""
        if isinstance(target, str):
            return self.attach_network(target)
        self._attach_node(target)
        return None

    def _attach_node(self, node: Any) -> None:
        self.node = node
        db = node.db
        now = trio.current_time()
        rng = self._rng if self._rng is not None else random.Random(node.rng.getrandbits(64))
        state_dir = db.settings.state_dir
        records: dict[tuple[Any, ...], Any] = {}
        if state_dir is not None:
            self.store = self._store_class(os.path.join(state_dir, "ipam"))
            records = self.store.load()
        core = None
        retired = False
        if records:
            try:
                core = Ipam.restore(self.config, records, rng=rng, now=now)
            except LocalProtocolError as exc:
                # A retired identity (a graceful leave ended it) is never resumed: keep its state for
                # forensics and start a new one (see the module docstring on names).
                assert self.store is not None
                aside = self.store.move_aside()
                log.warning("IPAM state not resumed (%s); moved to %s, starting a new identity", exc, aside)
                records, retired = {}, True
        if core is not None:
            if core.identity.host != node.name:
                raise ConfigError(
                    f"IPAM state belongs to host {core.identity.host!r} (identity {core.name}), not "
                    f"{node.name!r}; pass --name {core.identity.host}"
                )
            log.info(
                "IPAM identity %s resumed from %s: %d blocks believed",
                core.name,
                self.store.path if self.store else "?",
                len(core.believed()),
            )
        else:
            cid = db.core.cluster_id
            # Founder: no --join and no IPAM history here. A retired identity's successor is not one even
            # without --join: the cluster (and its VNI space) exists already.
            self._founder = not node.seeds and bool(cid) and not retired
            # A new identity: a name of its own (HOST~ + the incarnation's low 32 bits), never the name of
            # an earlier identity of this host (ipam.md 3.10); host = the gossip name.
            inc = rng.getrandbits(64)
            ident = Identity(f"{node.name}~{inc & 0xFFFFFFFF:08x}", node.name, inc, 0, cid)
            core = Ipam(self.config, identity=ident, rng=rng, now=now, founder=self._founder)
            log.info("IPAM identity %s created%s", core.name, " (cluster founder)" if self._founder else "")
        self.core = core
        self._learn(core.name, node.name)
        self._current[node.name] = core.name
        if db.core.cluster_id and not core.cluster_id:
            core.set_cluster_id(db.core.cluster_id, now=now)
        if not node.seeds:
            # Nobody to sync with: the founder (or a lone restart) knows all there is.
            self._global_synced = True
            core.network_synced("", now=now)
        for table in TABLES:
            self._watches.add(db.core.watch(table=table, include_hidden=True))
        self._identity_watch = db.core.watch(table=TABLE_IDENTITY, include_hidden=True)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        assert self.core is not None, "attach(node) first"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._persister)
            nursery.start_soon(self._timer_loop)
            self._running = True
            joined = set(self.node.db.core.networks())
            missing = [n for n in self.core.attached_networks() if n not in joined]
            if missing:
                self.node.db_input(lambda now: [self.node.db.core.join_network(n, now=now) for n in missing])
            # Announce this host's current identity (peers map its gossip verdicts to it).
            me, ident = self.node.name, self.core.name.encode()
            self.node.db_input(
                lambda now: self.node.db.core.put_entry(TABLE_IDENTITY, "", me, ident, now=now)
            )
            self._pump()
            task_status.started()
            await self._inbox_loop()

    def on_db_events(self, events: list[Any], now: float) -> None:
        core = self.core
        if core is None:
            return
        queued = False
        for ev in events:
            kind = type(ev)
            if kind is EntryCreated or kind is EntryUpdated:
                if ev.watch_id in self._watches:
                    self._inbox.append(lambda t, e=ev: self._on_record(e, t))
                    queued = True
                elif ev.watch_id == self._identity_watch:
                    self._inbox.append(lambda t, e=ev: self._on_identity(e, t))
                    queued = True
            elif kind is RequestReceived:
                if ev.payload.startswith(b"ipam"):
                    decoded = decode_request(ev.payload)
                    if decoded is None:
                        self.counters["bad_batches"] += 1
                        continue
                    self._inbox.append(lambda t, n=ev.node, d=decoded: self._on_messages(n, *d, t))
                    queued = True
            elif kind is NetworkSynced:
                if ev.network == "" and not ev.peers and not self._global_synced:
                    continue  # the empty sync of the global network at start (no peers known yet)
                self._inbox.append(lambda t, n=ev.network: self._synced_now(n, t))
                queued = True
            elif kind is ClusterIdSet:
                self._inbox.append(lambda t, c=ev.cluster_id: core.set_cluster_id(c, now=t))
                queued = True
        if queued:
            self._wake.set()

    def on_member_event(self, event: Any, now: float) -> None:
        core = self.core
        if core is None:
            return
        me = self.node.name
        fn: Callable[[float], Any] | None = None
        if isinstance(event, gev.MemberJoined | gev.MemberUpdated):
            if event.member.name != me and event.member.state == "alive":
                fn = lambda t, n=event.member.name: self._verdict(n, "alive", t)  # noqa: E731
        elif isinstance(event, gev.MemberFailed):
            fn = lambda t, n=event.member.name: self._verdict(n, "failed", t)  # noqa: E731
        elif isinstance(event, gev.MemberLeft):
            fn = lambda t, n=event.member.name: self._verdict(n, "left", t)  # noqa: E731
        elif isinstance(event, gev.MemberReaped):
            fn = lambda t, n=event.name: self._verdict(n, "left", t)  # noqa: E731
        if not self._global_synced and (
            isinstance(event, gev.JoinCompleted) or (isinstance(event, gev.MemberJoined) and fn is not None)
        ):
            # The first peer: its entries arrive by NetworkDB's bootstrap sync shortly after.
            self._global_synced = True
            self._inbox.append(self._schedule_global_synced)
            self._wake.set()
        if fn is not None:
            self._inbox.append(fn)
            self._wake.set()

    async def leave(self) -> None:
        """The core's graceful leave: blocks (with their manifests) go to heirs, bounded by
        ``leave_wait`` plus slack; the identity is retired."""
        if self.core is None or not self._running:
            return
        try:
            with trio.move_on_after(self.config.leave_wait + 2.0):
                ev = await self._run_op(lambda now: self.core.leave(now=now), self.config.leave_wait)
                if isinstance(ev, LeaveCompleted):
                    log.info(
                        "IPAM leave: %d blocks handed over, %d unconfirmed", ev.handed, len(ev.unconfirmed)
                    )
                # Let the persister and NetworkDB take the last records before the gossip leave.
                with trio.move_on_after(1.0):
                    while self._persist_queue:
                        await trio.sleep(0.01)
        except IpamError as exc:
            log.warning("IPAM leave failed: %s", exc)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        if self.core is not None:
            out["identity"] = self.core.name
            out["host"] = self.core.identity.host
            out["hosts"] = {h: self._current.get(h, "") for h in sorted(self._idents)}
            out["core"] = self.core.stats()
        out["pending_ops"] = len(self._ops)
        out["persist_queue"] = len(self._persist_queue)
        out["persist_error"] = self.persist_error
        out["state_dir"] = self.store.path if self.store is not None else None
        out["latency_ms"] = {kind: _percentiles(list(d)) for kind, d in sorted(self._latency.items())}
        return out

    def reset_latency(self) -> None:
        """Forget the latency samples (``POST /v1/ipam/latency/reset``, for benchmarks)."""
        self._latency.clear()

    # ------------------------------------------------------------------ the contract (CnmService)

    async def create_network(
        self, network_id: str, *, subnets: Sequence[str | SubnetConfig] = (), ipv6: bool = False
    ) -> NetConfig:
        """Create a network: its VNI and subnets (a pool subnet if none are given); this node then
        owns every block. The network's NetworkDB network is joined before its first record is written
        (``_emit``), i.e. only once the core accepted the id."""
        subs = list(subnets) or None
        if ipv6 and not any(":" in (s.subnet if isinstance(s, SubnetConfig) else s) for s in subs or ()):
            raise LocalProtocolError("an IPv6 network needs an IPv6 subnet (there is no IPv6 pool)")
        ev = await self._run_op(lambda now: self.core.create_network(network_id, subnets=subs, now=now))
        assert isinstance(ev, NetworkCreated)
        return ev.netcfg

    async def attach_network(self, network_id: str) -> None:
        """Use a network created elsewhere: join its NetworkDB network (waiting for the join sync,
        bounded), publish its config and ask for one block of each subnet."""
        self._require()
        await self._join(network_id, wait=True)
        self._step(lambda now: self.core.attach(network_id, now=now))

    async def allocate(
        self, network_id: str, *, tag: str, preferred: str | None = None, ipv6: bool = False
    ) -> str:
        """An address in the network, held for ``tag`` (idempotent per tag)."""
        ev = await self.allocate_event(network_id, tag=tag, preferred=preferred, ipv6=ipv6)
        return ev.value

    async def allocate_event(
        self, network_id: str, *, tag: str, preferred: str | None = None, ipv6: bool = False
    ) -> Allocated:
        """``allocate`` with the whole ``Allocated`` event (the owner that recorded it)."""
        if preferred is not None:
            preferred = preferred.split("/", 1)[0]
        family = None if preferred is not None else (6 if ipv6 else 4)
        t0 = trio.current_time()
        ev = await self._run_op(
            lambda now: self.core.allocate(network_id, tag=tag, address=preferred, family=family, now=now)
        )
        assert isinstance(ev, Allocated)
        kind = "allocate_local" if ev.owner == self.core.name else "allocate_remote"
        self._latency.setdefault(kind, deque(maxlen=LATENCY_SAMPLES)).append(trio.current_time() - t0)
        return ev

    async def release(self, network_id: str, address: str, *, tag: str) -> None:
        """Release ``address`` held for ``tag``; a no-op if this node holds no such allocation."""
        self._require()
        addr = address.split("/", 1)[0]
        ok = self._step(lambda now: self.core.release(network_id, addr, tag=tag, now=now))
        if not ok:
            log.debug("release of %s in %s for %s: not held here", addr, network_id, tag)

    async def delete_network(self, network_id: str) -> None:
        """A no-op: the IPAM core has no network deletion yet (the blocks and the VNI stay owned)."""
        self._require()

    def netcfg(self, network_id: str) -> NetConfig | None:
        return self.core.netcfg(network_id) if self.core is not None else None

    def needs_network(self, network_id: str) -> bool:
        """Whether IPAM must stay joined to the network's NetworkDB network (a leave would delete its
        records there cluster-wide): it uses the network (created or attached; the core has no detach
        yet, so this stays true), or it writes an ``ipam.*`` entry there (its blocks, grants, copies)."""
        if self.core is None or network_id in self.core.attached_networks():
            return True
        db = self.node.db.core
        me = self.node.name
        return any(
            e.owner == me for table in TABLES for e in db.walk_table(table, network_id, include_hidden=True)
        )

    # ------------------------------------------------------------------ more operations

    async def reclaim(self, nodes: Sequence[str], *, force: bool = False) -> Reclaimed:
        """``meshnetctl ipam reclaim``: take the space of nodes asserted gone (single winner). A host
        (gossip) name stands for its identities that are not running: all of them if the host is not
        alive, else its superseded ones; an exact identity name for itself."""
        targets = self._reclaim_targets(nodes)
        ev = await self._run_op(
            lambda now: self.core.reclaim(targets, force=force, now=now), self.config.reclaim_budget
        )
        assert isinstance(ev, Reclaimed)
        return ev

    def listing(self, network: str | None = None) -> list[Any]:
        self._require()
        return self.core.listing(network)

    # ------------------------------------------------------------------ API

    async def handle_api(self, node: Any, request: Any) -> Any:
        """``/v1/ipam...`` (routes in ``meshnet/runtime/ipam_api.py``)."""
        return await handle_ipam_api(self, request)

    # ------------------------------------------------------------------ internals: driving the core

    def _require(self) -> None:
        if self.core is None or not self._running:
            raise ApiError(503, "stopped", "the IPAM service is not running")

    def _step(self, fn: Callable[[float], Any]) -> Any:
        """One local input at the current time, then pump (the caller's task)."""
        now = trio.current_time()
        self.counters["inputs"] += 1
        try:
            return fn(now)
        finally:
            self._pump()

    async def _run_op(self, start: Callable[[float], Any], budget: float | None = None) -> Any:
        """Start an operation (``start`` returns its OpId) and wait for its result event."""
        self._require()
        pending = _Pending()
        op = self._step(lambda now: self._register(start(now), pending))
        del op
        limit = (budget if budget is not None else self.config.allocation_budget) + _OP_SLACK
        with trio.move_on_after(limit):
            await pending.done.wait()
        ev = pending.event
        if ev is None:
            raise Unknown(f"the IPAM core gave no answer in {limit:.0f}s (state directory stuck?)")
        if isinstance(ev, OperationFailed):
            err = ev.error
            if isinstance(err, IpamError):
                err.message = self._readable(err.message)
                err.args = (err.message,)
            raise err
        return ev

    def _register(self, op: int, pending: _Pending) -> int:
        self._ops[op] = pending
        return op

    def _synced_now(self, network: str, now: float) -> None:
        self._synced.add(network)
        wait = self._sync_waits.pop(network, None)
        if wait is not None:
            wait.set()
        self.core.network_synced(network, now=now)

    def _schedule_global_synced(self, now: float) -> None:
        async def later() -> None:
            await trio.sleep(self.global_sync_timeout)
            self._inbox.append(lambda t: self.core.network_synced("", now=t))
            self._wake.set()

        self._nursery_start(later)

    def _nursery_start(self, fn: Callable[[], Any]) -> None:
        nursery = getattr(self, "_nursery", None)
        if nursery is not None:
            nursery.start_soon(fn)

    async def _join(self, network: str, *, wait: bool) -> None:
        db = self.node.db
        if network in db.core.networks():
            return
        ev = self._sync_waits.setdefault(network, trio.Event())
        self.node.db_input(lambda now: db.core.join_network(network, now=now))
        if wait:
            with trio.move_on_after(self.node.db.settings.config.request_timeout * 4 + 5.0):
                await ev.wait()

    async def _inbox_loop(self) -> None:
        self._nursery = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                if not self._inbox:
                    continue
                while self._inbox:
                    fn = self._inbox.popleft()
                    now = trio.current_time()
                    self.counters["inputs"] += 1
                    try:
                        fn(now)
                    except Exception:
                        self.counters["input_errors"] += 1
                        log.exception("the IPAM core raised on an input (counted as input_errors)")
                self._pump()

    def _pump(self) -> None:
        core = self.core
        assert core is not None
        persists = core.persists_to_write()
        if persists:
            self._persist_queue.extend(persists)
            self._persist_wake.set()
        writes = core.writes_to_send()
        messages = core.messages_to_send()
        if writes or messages:
            try:
                self.node.db_input(lambda now: self._emit(writes, messages, now))
            except Exception:
                # A NetworkDB core that raises (a bug: _emit catches its refusals) must not stop the
                # agent: counted and logged.
                self.counters["write_errors"] += 1
                log.exception("NetworkDB raised on the IPAM outputs (counted as write_errors)")
        while (ev := core.next_event()) is not None:
            self._on_core_event(ev)
        deadline = core.next_deadline()
        self._deadline = math.inf if deadline is None else deadline
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._deadline

    def _emit(self, writes: list[Any], messages: list[Any], now: float) -> None:
        db = self.node.db.core
        joined = set(db.networks())
        for w in writes:
            try:
                if w.network not in joined:
                    self._sync_waits.setdefault(w.network, trio.Event())
                    db.join_network(w.network, now=now)
                    joined.add(w.network)
                if w.value is None:
                    if db.get_entry(w.table, w.network, w.key, include_hidden=True) is not None:
                        db.delete_entry(w.table, w.network, w.key, now=now)
                else:
                    db.put_entry(w.table, w.network, w.key, w.value, now=now)
                self.counters["writes"] += 1
            except LocalProtocolError as exc:
                self.counters["write_errors"] += 1
                log.warning("IPAM write %s/%r/%s refused by NetworkDB: %s", w.table, w.network, w.key, exc)
        # One request per destination and burst (a leave hands thousands of blocks to one heir: one
        # datagram each would overflow the node's send queue), in the core's order.
        by_node: dict[str, list[bytes]] = {}
        for m in messages:
            by_node.setdefault(m.node, []).append(m.payload)
        limit = self.node.db.settings.config.max_request_bytes
        me, src = self.node.name, self.core.name
        for ident, payloads in by_node.items():
            node = self.host_of(ident)
            if node == me:
                # an earlier identity of this host: it is gone (this process holds the host's lock)
                self.counters["undeliverable_messages"] += len(payloads)
                continue
            for payload in encode_requests(payloads, max(limit - BATCH_MARGIN, 1), src=src, dst=ident):
                try:
                    db.request(node, payload, now=now, reliable=len(payload) > RELIABLE_ABOVE)
                    self.counters["requests_sent"] += 1
                except LocalProtocolError as exc:
                    self.counters["send_errors"] += 1
                    # No address known (the node is gone): the core retries or moves on. Too large: a
                    # bug worth seeing (the core splits what it knows can grow).
                    too_large = len(payload) > limit
                    (log.warning if too_large else log.debug)("IPAM message to %s not sent: %s", node, exc)
            self.counters["messages_sent"] += len(payloads)

    def _on_core_event(self, ev: Any) -> None:
        if isinstance(ev, Alarm):
            self.counters["alarms"] += 1
            log.warning("IPAM alarm %s: %s", ev.code, ev.message)
            return
        op = getattr(ev, "op", None)
        pending = self._ops.pop(op, None) if op is not None else None
        if pending is not None:
            pending.event = ev
            pending.done.set()
        if isinstance(ev, Reclaimed):
            log.info(
                "IPAM reclaim of %s: %d blocks won, %d abandoned",
                ", ".join(ev.targets),
                ev.blocks,
                ev.abandoned,
            )
        elif isinstance(ev, OperationFailed) and ev.what != "allocate":
            log.warning("IPAM %s failed: %s", ev.what, ev.error)

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            try:
                self._step(lambda now: self.core.handle_timer(now=now))
            except Exception:
                self.counters["input_errors"] += 1
                log.exception("the IPAM core raised in handle_timer (counted as input_errors)")
                self._deadline = trio.current_time() + 1.0

    def _acknowledge(self, batch: list[Persist], now: float) -> None:
        assert self.core is not None
        for p in batch:
            self.core.persisted(p.seq, now=now)

    async def _persister(self) -> None:
        store = self.store
        try:
            while True:
                if not self._persist_queue:
                    await self._persist_wake.wait()
                    self._persist_wake = trio.Event()
                    continue
                batch, self._persist_queue = self._persist_queue, []
                if store is not None:
                    try:
                        data = store.encode(batch)
                        await trio.to_thread.run_sync(store.append, batch, data)
                        if store.wants_compaction():
                            await trio.to_thread.run_sync(store.compact)
                            self.counters["compactions"] += 1
                    except OSError as exc:
                        # Never acknowledge what is not durable: nothing that depends on it leaves.
                        self._persist_queue = batch + self._persist_queue
                        self.counters["persist_errors"] += 1
                        self.persist_error = f"cannot write {store.path}: {exc}"
                        log.error("%s; retrying in %.0fs", self.persist_error, PERSIST_RETRY_INTERVAL)
                        await trio.sleep(PERSIST_RETRY_INTERVAL)
                        continue
                    self.persist_error = None
                self.counters["persist_batches"] += 1
                self.counters["persists"] += len(batch)
                self._step(lambda now, b=batch: self._acknowledge(b, now))
        finally:
            if store is not None:
                store.close()
