"""A deterministic multi-node harness for IPAM cores: replicated tables, direct messages, fsync, faults.

Theory of operation. ``Cluster`` owns one slot per *host*; a host runs at most one IPAM identity at a
time (the host lock of ipam.md A2) and has at most one state directory (``disk``, a dict the harness
writes only when a ``Persist`` completes). It plays every layer below IPAM:

* **NetworkDB, as IPAM needs it** (DESIGN.md, ipam.md 3.8): each identity has a replica of the
  ``ipam.*`` entries of the scopes it joined (``""`` always, a network once it creates or attaches to
  it). A write is applied locally at once and gossiped to every reachable replica after ``latency``
  (dropped with probability ``loss``); every ``sync_interval`` each pair of reachable nodes exchanges
  its entries (anti-entropy), and a join syncs at once and then reports ``network_synced``. Entries of
  failed nodes stay readable (hidden entries, R1); a graceful leave or a reap removes them everywhere.
  Versions are one global counter, so a restarted node's writes beat its old ones (R2). A replica is
  memory: a crash loses it, the restarted core re-asserts its own records.
* **Direct messages**: delivered after ``latency`` plus up to ``jitter`` (reordering), dropped with
  ``loss``, duplicated with ``dup``, and dropped when the link is cut at delivery time.
* **Membership**: a perfect failure detector (as the NetworkDB harness): a crash is seen at once by the
  crashed node's side, a partition makes each side see the other failed, healing makes everyone alive,
  a leave or a reap is seen as left.
* **fsync**: a ``Persist`` completes ``fsync`` seconds after it was emitted, in order; then the disk is
  updated and ``persisted(seq)`` called. A crash drops the persists in flight: the restarted node
  resumes from what the disk holds.

A stateless restart gives the host a fresh identity (``<host>.<n>``; names are never reused). Time only
moves in ``run_until``/``run_for``: deliveries, fsyncs, syncs and core deadlines run in time order (ties
by a sequence number), so a run is a pure function of the seed; ``trace_hash()`` digests everything that
happened (events, lifecycle, delivered messages, table writes, completed persists: the determinism
oracle).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from meshnet.ipam import (
    Alarm,
    Allocated,
    Ipam,
    IpamConfig,
    LeaveCompleted,
    NetworkCreated,
    OperationFailed,
    Reclaimed,
    summarize,
)
from meshnet.ipam.messages import decode
from meshnet.ipam.state import Persist

__all__ = ["Cluster", "HostSlot"]

RESULT_EVENTS = (Allocated, NetworkCreated, OperationFailed, Reclaimed, LeaveCompleted)


@dataclass
class Rec:
    value: bytes | None
    writer: str
    version: int


@dataclass
class HostSlot:
    host: str
    name: str = ""
    core: Ipam | None = None
    disk: dict[tuple[Any, ...], Any] | None = None
    group: int = 0
    lives: int = 0
    replica: dict[tuple[str, str, str], Rec] = field(default_factory=dict)
    joined: set[str] = field(default_factory=set)
    events: list[object] = field(default_factory=list)
    #: persists emitted and not yet durable: (seq, Persist)
    inflight: list[Persist] = field(default_factory=list)
    #: a reclaimed host may never restart with this disk's identity (the operator said it is gone)
    destroyed: bool = False
    #: bumped on every change of ``disk`` (summaries are cached per version)
    disk_version: int = 0
    #: bumped on every change of ``replica`` (anti-entropy skips unchanged peers)
    replica_version: int = 0


class Cluster:
    """Several IPAM cores over a simulated NetworkDB and network."""

    def __init__(
        self,
        hosts: int | list[str],
        *,
        config: IpamConfig | None = None,
        seed: int = 0,
        latency: float = 0.002,
        jitter: float = 0.0,
        fsync: float = 0.001,
        sync_interval: float = 5.0,
        loss: float = 0.0,
        dup: float = 0.0,
        found: bool = True,
        cluster_id: str | None = None,
        clusters: dict[str, str] | None = None,
        netdb_checks_cluster: bool = True,
    ) -> None:
        if isinstance(hosts, int):
            hosts = [f"h{i}" for i in range(hosts)]
        self.config = config if config is not None else IpamConfig()
        self.seed = seed
        self.rng = random.Random(f"{seed}:net")
        self.latency, self.jitter, self.fsync = latency, jitter, fsync
        self.sync_interval = sync_interval
        self.loss, self.dup = loss, dup
        self.now = 0.0
        self._seq = 0
        self._version = 0
        self._heap: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self.slots: dict[str, HostSlot] = {h: HostSlot(h) for h in hosts}
        self.names_used: set[str] = set()
        self.cluster_id = cluster_id if cluster_id is not None else f"cluster-{seed}"
        #: host -> cluster id (``clusters`` overrides ``cluster_id`` per host: two founders, ...)
        self.cluster_of = {h: (clusters or {}).get(h, self.cluster_id) for h in hosts}
        #: NetworkDB refuses traffic between nodes of different cluster ids (tables, direct messages,
        #: membership); False lets records leak across, to test IPAM's own defence
        self.netdb_checks_cluster = netdb_checks_cluster
        #: identity -> host, for every identity ever started
        self.host_of: dict[str, str] = {}
        #: identity -> membership verdicts others hold about it are derived from slots; "left" ones here
        self.left: set[str] = set()
        self._hash = hashlib.blake2b(digest_size=16)
        self.trace_tail: list[str] = []
        self.delivered = 0
        self.dropped = 0
        #: delivered direct messages (src host, dst host, dst name, payload), for replays
        self.history: list[tuple[str, str, str, bytes]] = []
        self._traps: dict[str, list[Any]] = {}
        self._summaries: dict[str, tuple[tuple[int, int], Any]] = {}
        self._synced: dict[tuple[Any, ...], int] = {}
        self._crash_now: list[str] = []
        founders = {}
        for h in hosts:  # the first host of each cluster id founds it
            founders.setdefault(self.cluster_of[h], h)
        for h in hosts:
            self._start(h, founder=found and founders[self.cluster_of[h]] == h)
        for h in hosts:
            self._announce(h)
        self._schedule(self.now + sync_interval, "sync", ())
        self.run_for(0.2)

    # ------------------------------------------------------------------ access

    @property
    def hosts(self) -> list[str]:
        return sorted(self.slots)

    @property
    def up(self) -> list[str]:
        return [h for h in self.hosts if self.slots[h].core is not None]

    def is_up(self, host: str) -> bool:
        return self.slots[host].core is not None

    def ipam(self, host: str) -> Ipam:
        core = self.slots[host].core
        assert core is not None, f"{host} is down"
        return core

    def name(self, host: str) -> str:
        return self.slots[host].name

    def can_talk(self, a: str, b: str) -> bool:
        return self.is_up(a) and self.is_up(b) and self._same_side(a, b)

    def _same_side(self, a: str, b: str) -> bool:
        return self.slots[a].group == self.slots[b].group and self._same_cluster(a, b)

    def _same_cluster(self, a: str, b: str) -> bool:
        return not self.netdb_checks_cluster or self.cluster_of[a] == self.cluster_of[b]

    def trace(self, line: str) -> None:
        self._hash.update(f"{self.now:.6f} {line}\n".encode())
        self.trace_tail.append(f"{self.now:.3f} {line}")
        if len(self.trace_tail) > 400:
            del self.trace_tail[:200]

    def trace_hash(self) -> str:
        return self._hash.hexdigest()

    def take_events(self, host: str, kind: type | tuple[type, ...] | None = None) -> list[object]:
        slot = self.slots[host]
        if kind is None:
            out, slot.events = slot.events, []
            return out
        out = [e for e in slot.events if isinstance(e, kind)]
        slot.events = [e for e in slot.events if not isinstance(e, kind)]
        return out

    def result(self, host: str, op: int) -> object | None:
        """The result event of operation ``op`` on ``host`` (kept in the slot's events), or None."""
        for e in self.slots[host].events:
            if isinstance(e, RESULT_EVENTS) and e.op == op:
                return e
        return None

    def wait(self, host: str, op: int, timeout: float = 30.0, step: float = 0.05) -> object | None:
        """Run until ``op`` ends on ``host`` (or ``timeout``); its result event."""
        end = self.now + timeout
        while self.now < end:
            r = self.result(host, op)
            if r is not None:
                return r
            if not self.is_up(host):
                return None
            self.run_for(step)
        return self.result(host, op)

    def alarms(self) -> list[tuple[str, Alarm]]:
        return [(h, e) for h, s in sorted(self.slots.items()) for e in s.events if isinstance(e, Alarm)]

    # ------------------------------------------------------------------ driving

    def call(self, host: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Invoke an Ipam method on ``host`` at the current time, then collect its outputs."""
        kwargs["now"] = self.now
        if method in ("attach", "create_network"):
            self._join(host, args[0])  # the shell joins the network in NetworkDB first
        out = getattr(self.ipam(host), method)(*args, **kwargs)
        self.pump(host)
        self._reap_traps()
        return out

    def pump(self, host: str) -> None:
        slot = self.slots[host]
        core = slot.core
        if core is None:
            return
        for p in core.persists_to_write():
            slot.inflight.append(p)
            self._schedule(self.now + self.fsync, "fsync", (host, slot.lives, p.seq))
        for w in core.writes_to_send():
            self._write(host, w.table, w.network, w.key, w.value)
        for m in core.messages_to_send():
            self._send(host, m.node, m.payload)
        while (ev := core.next_event()) is not None:
            slot.events.append(ev)
            self.trace(f"{slot.name} event {ev!r}")
        self._count_input(host, "any")

    def _count_input(self, host: str, kind: str) -> None:
        trap = self._traps.get(host)
        if trap is not None and trap[1] == kind:
            trap[0] -= 1
            if trap[0] <= 0:
                del self._traps[host]
                self._crash_now.append(host)

    def crash_after(self, host: str, inputs: int = 1, *, on: str = "any") -> None:
        """Crash ``host`` right after it handled ``inputs`` more inputs (``on="any"``: a message, a
        record, a timer, an fsync; ``on="message"``: direct messages only), before anything else
        happens: the persists it just issued are lost, what it sent is on its way."""
        self._traps[host] = [inputs, on]

    def clear_traps(self) -> None:
        self._traps.clear()

    def replay(self, i: int, *, kind: type | None = None) -> None:
        """Deliver again (now + latency) the ``i``-th remembered message (of type ``kind`` only, if given):
        a duplicate with any delay."""
        pool = self.history
        if kind is not None:
            pool = [h for h in pool if isinstance(decode(h[3]).body, kind)]
        if not pool:
            return
        src, dst, dst_name, payload = pool[i % len(pool)]
        self.trace(f"replay {src}->{dst_name}")
        self._schedule(self.now + self.latency, "msg", (src, dst, dst_name, payload))

    def _reap_traps(self) -> None:
        while self._crash_now:
            h = self._crash_now.pop(0)
            if self.is_up(h):
                self.crash(h)

    def _schedule(self, t: float, kind: str, payload: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def run_until(self, t: float) -> None:
        for h in self.up:
            self.pump(h)
        while True:
            nxt = self._heap[0][0] if self._heap else None
            who = None
            for h in self.up:
                d = self.ipam(h).next_deadline()
                if d is not None and (nxt is None or d < nxt):
                    nxt, who = d, h
            if nxt is None or nxt > t:
                break
            self.now = max(self.now, nxt)
            if who is not None:
                self.ipam(who).handle_timer(now=self.now)
                self.pump(who)
            else:
                _, _, kind, payload = heapq.heappop(self._heap)
                getattr(self, f"_do_{kind}")(*payload)
            self._reap_traps()
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    # ------------------------------------------------------------------ events of the world

    def _do_fsync(self, host: str, life: int, seq: int) -> None:
        slot = self.slots[host]
        if slot.lives != life or slot.core is None or not slot.inflight or slot.inflight[0].seq != seq:
            return
        p = slot.inflight.pop(0)
        assert slot.disk is not None
        self._hash.update(f"p {slot.name} {p.seq} {sorted(repr(k) for k, _ in p.records)}\n".encode())
        slot.disk_version += 1
        for key, value in p.records:
            if value is None:
                slot.disk.pop(key, None)
            else:
                slot.disk[key] = value
        self.on_persist(host, p)
        slot.core.persisted(seq, now=self.now)
        self.pump(host)

    def on_persist(self, host: str, p: Persist) -> None:
        """Hook for checkers (history of durable decisions)."""

    def linked(self, src: str, dst: str) -> bool:
        """Whether a packet already sent by ``src`` reaches ``dst`` now (the sender may have crashed
        since: what it sent still arrives; a partition cuts it)."""
        return self.is_up(dst) and self._same_side(src, dst)

    def _do_msg(self, src: str, dst: str, dst_name: str, payload: bytes) -> None:
        if not self.linked(src, dst) or self.slots[dst].name != dst_name:
            self.dropped += 1
            return
        self.delivered += 1
        self._hash.update(b"m" + payload[:64])
        self.history.append((src, dst, dst_name, payload))
        if len(self.history) > 400:
            del self.history[:200]
        self.ipam(dst).receive_message(self.slots[src].name, payload, now=self.now)
        self.pump(dst)
        self._count_input(dst, "message")

    def _do_gossip(
        self, src_name: str, dst: str, dst_name: str, slot_key: tuple[str, str, str], rec: Rec
    ) -> None:
        src = self.host_of.get(src_name)
        if src is None or not self.linked(src, dst) or self.slots[dst].name != dst_name:
            return
        self._merge(dst, slot_key, rec)

    def _do_sync(self) -> None:
        for a in self.up:
            for b in self.up:
                if a != b and self.can_talk(a, b):
                    self._sync_pair(a, b)
        self._schedule(self.now + self.sync_interval, "sync", ())

    def _do_joined(self, host: str, name: str, network: str) -> None:
        slot = self.slots[host]
        if slot.name != name or slot.core is None:
            return
        for other in self.up:
            if other != host and self.can_talk(host, other):
                self._sync_pair(host, other, only=network)
        slot.core.network_synced(network, now=self.now)
        self.pump(host)

    # ------------------------------------------------------------------ the table layer

    def _write(self, host: str, table: str, network: str, key: str, value: bytes | None) -> None:
        slot = self.slots[host]
        if network not in slot.joined:
            self._join(host, network)
        self._version += 1
        self._hash.update(f"w {slot.name} {table} {network} {key} {value!r}\n".encode())
        rec = Rec(value, slot.name, self._version)
        slot.replica[(table, network, key)] = rec
        slot.replica_version += 1
        for other in self.up:
            if other == host or network not in self.slots[other].joined or not self.can_talk(host, other):
                continue
            if self.loss and self.rng.random() < self.loss:
                continue
            self._schedule(self.now + self.latency, "gossip", (slot.name, other, self.slots[other].name,
                                                               (table, network, key), rec))  # fmt: skip

    def _merge(self, host: str, slot_key: tuple[str, str, str], rec: Rec) -> None:
        slot = self.slots[host]
        if slot_key[1] not in slot.joined or rec.writer in self.left:
            return
        cur = slot.replica.get(slot_key)
        if cur is not None and cur.version >= rec.version:
            return
        slot.replica[slot_key] = rec
        slot.replica_version += 1
        if rec.value is not None and slot.core is not None:
            table, network, key = slot_key
            slot.core.handle_record(table, network, key, rec.value, owner=rec.writer, now=self.now)
            self.pump(host)

    def _sync_pair(self, a: str, b: str, only: str | None = None) -> None:
        """``a`` learns ``b``'s entries of the scopes both joined."""
        sa, sb = self.slots[a], self.slots[b]
        mark = (sa.name, sb.name, sa.lives, frozenset(sa.joined))
        if only is None and self._synced.get(mark) == sb.replica_version:
            return
        for slot_key, rec in list(sb.replica.items()):  # insertion order: deterministic
            if (only is None or slot_key[1] == only) and slot_key[1] in sa.joined:
                self._merge(a, slot_key, rec)
        if only is None:
            self._synced[mark] = sb.replica_version

    def _join(self, host: str, network: str) -> None:
        slot = self.slots[host]
        slot.joined.add(network)
        self._schedule(self.now + self.latency, "joined", (host, slot.name, network))

    def _send(self, src: str, dst_name: str, payload: bytes) -> None:
        dst = self.host_of.get(dst_name)
        if dst is None or not self.can_talk(src, dst) or self.slots[dst].name != dst_name:
            self.dropped += 1
            return
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return
        copies = 2 if self.dup and self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.latency + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)
            self._schedule(self.now + delay, "msg", (src, dst, dst_name, payload))

    # ------------------------------------------------------------------ lifecycle and membership

    def _start(self, host: str, *, founder: bool = False, restore: bool = False) -> None:
        slot = self.slots[host]
        slot.lives += 1
        slot.replica, slot.joined, slot.inflight = {}, {""}, []
        slot.events = []  # events (and op ids) belong to one life of a core
        rng = random.Random(f"{self.seed}:{host}:{slot.lives}")
        if restore:
            assert slot.disk is not None
            slot.core = Ipam.restore(self.config, dict(slot.disk), rng=rng, now=self.now)
        else:
            n = sum(1 for x in self.names_used if self.host_of.get(x) == host)
            name = host if n == 0 else f"{host}.{n}"
            assert name not in self.names_used
            slot.disk = {}
            slot.disk_version += 1
            slot.destroyed = False
            slot.core = Ipam.fresh(
                self.config, host=host, name=name, rng=rng, now=self.now,
                cluster_id=self.cluster_of[host], founder=founder,
            )  # fmt: skip
        slot.name = slot.core.name
        for net in slot.core.attached_networks():
            self._join(host, net)
        self.names_used.add(slot.name)
        self.host_of[slot.name] = host
        self.left.discard(slot.name)
        self.trace(f"{slot.name} start restore={restore} founder={founder}")
        self._join(host, "")
        self.pump(host)

    def _announce(self, host: str) -> None:
        """``host`` and every node it can talk to see each other alive; ``host`` also learns the
        verdicts the others hold (failed, left) about identities that are down, as gossip's push-pull
        would tell it."""
        me = self.slots[host]
        current = {s.name for s in self.slots.values() if s.core is not None}
        for name in sorted(self.names_used - current - {me.name}):
            if name in self.left:
                me.core.node_left(name, now=self.now)
            else:
                me.core.node_failed(name, now=self.now)
        for other in self.up:
            if other != host and self.can_talk(host, other):
                self.ipam(other).node_alive(me.name, now=self.now)
                self.pump(other)
                self.ipam(host).node_alive(self.slots[other].name, now=self.now)
        self.pump(host)

    def crash(self, host: str) -> None:
        """Stop ``host`` abruptly: its in-flight persists are lost, its disk stays."""
        slot = self.slots[host]
        assert slot.core is not None
        self.trace(f"{slot.name} crash (lost {len(slot.inflight)} persists)")
        slot.core, slot.inflight = None, []
        for other in self.up:
            if self._same_side(other, host):
                self.ipam(other).node_failed(slot.name, now=self.now)
                self.pump(other)

    def restart(self, host: str, *, state: bool = True) -> None:
        """Restart a crashed host with its state directory (same identity) or without (a new one)."""
        slot = self.slots[host]
        assert slot.core is None
        if state:
            assert slot.disk is not None and not slot.destroyed, f"{host} has no usable state dir"
        self._start(host, restore=state)
        self._announce(host)

    def partition(self, *groups: list[str]) -> None:
        """Cut into groups (unlisted hosts form group 0); each side sees the other failed."""
        listed = {h for g in groups for h in g}
        for i, g in enumerate(groups):
            for h in g:
                self.slots[h].group = i + 1
        for h in self.hosts:
            if h not in listed:
                self.slots[h].group = 0
        self.trace(f"partition {groups}")
        for a in self.up:
            for b in self.up:
                if a != b and self.slots[a].group != self.slots[b].group and self._same_cluster(a, b):
                    self.ipam(a).node_failed(self.slots[b].name, now=self.now)
                    self.pump(a)

    def heal(self) -> None:
        """One group again: everyone sees everyone alive."""
        for h in self.hosts:
            self.slots[h].group = 0
        self.trace("heal")
        for h in self.up:
            self._announce(h)

    def leave(self, host: str, *, wait: float | None = None) -> object | None:
        """Graceful leave: run ``Ipam.leave`` until it completes, then everyone sees the node left and its
        entries are removed; the host is down without state afterwards."""
        op = self.call(host, "leave")
        res = self.wait(host, op, timeout=wait if wait is not None else self.config.leave_wait + 1)
        if self.is_up(host):  # else it crashed during the leave: a crash, not a departure
            self.depart(host)
        return res

    def depart(self, host: str) -> None:
        slot = self.slots[host]
        name = slot.name
        self.trace(f"{name} left")
        slot.core, slot.disk, slot.inflight = None, None, []
        self.forget(name)

    def forget(self, name: str) -> None:
        """``name`` left or was reaped: everyone sees it left; its entries vanish from every replica."""
        self.left.add(name)
        for h in self.up:
            s = self.slots[h]
            s.replica = {k: r for k, r in s.replica.items() if r.writer != name}
            s.replica_version += 1
            if s.name != name:
                self.ipam(h).node_left(name, now=self.now)
                self.pump(h)

    def destroy(self, host: str) -> None:
        """The operator asserts the crashed ``host`` is gone: its state dir will never be used again."""
        slot = self.slots[host]
        assert slot.core is None
        slot.destroyed = True
        slot.disk = None

    # ------------------------------------------------------------------ durable ground truth

    def summary(self, host: str):
        """What ``host``'s state directory says (``meshnet.ipam.summarize``), cached per disk version."""
        slot = self.slots[host]
        if slot.disk is None:
            return None
        key = (id(slot.disk), slot.disk_version)
        cached = self._summaries.get(host)
        if cached is not None and cached[0] == key:
            return cached[1]
        s = summarize(slot.disk, self.config)
        self._summaries[host] = (key, s)
        return s
