"""An in-memory multi-node harness for NetworkDB cores: no Swim, explicit virtual time.

Theory of operation: ``Cluster`` owns several ``NetworkDB`` instances and plays the gossip layer for
them. Broadcasts go to every other reachable node, direct messages to their target, each after
``latency`` seconds (in-flight traffic is dropped if the link is cut before delivery; unreliable
messages are also dropped with probability ``loss``). Membership verdicts are delivered at once, as a
perfect failure detector would: a partition makes each side see the other failed, healing makes each
side see the other alive again with a higher incarnation (a SWIM refutation), a crash makes everyone
see the node failed, a graceful leave makes everyone see it left.

Time only moves in ``run_until``/``run_for``: deliveries and node deadlines are processed in time order
(ties by a sequence number), so a run is a pure function of the seed. ``restart(name, state=True)``
emulates an agent with its state directory: the persisted high-water mark and cluster id, and the
node's own live entries and joined networks re-asserted before any input; ``state=False`` is an empty
directory.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from meshnet.networkdb import (
    ClusterIdSet,
    Entry,
    HighWaterRaised,
    NetworkDB,
    NetworkDBConfig,
    fast,
)

__all__ = ["Cluster", "settle_time"]


def settle_time(config: NetworkDBConfig, n: int) -> float:
    """A bound for convergence after healing: every pair bulk-syncs within ``n - 1`` rounds (the sync
    rotation), plus one round of stagger, a sync timeout per round and gossip drain time."""
    rounds = max(1, n - 1) + 2
    return rounds * (config.bulk_sync_interval + config.bulk_sync_timeout) + 20 * config.gossip_interval


@dataclass
class _NodeSlot:
    name: str
    addr: tuple[str, int]
    db: NetworkDB | None
    incarnation: int = 1
    high_water: int = 0
    cluster_id: str = ""
    events: list[object] = field(default_factory=list)
    #: agent state: own live entries (table, network, key, value) and joined networks
    saved_entries: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    saved_networks: list[str] = field(default_factory=list)


class Cluster:
    """Several NetworkDB cores wired together in memory."""

    def __init__(
        self,
        names: list[str] | int,
        *,
        config: NetworkDBConfig | None = None,
        seed: int = 0,
        latency: float = 0.001,
        loss: float = 0.0,
        found: bool = False,
    ) -> None:
        if isinstance(names, int):
            names = [f"n{i}" for i in range(names)]
        self.config = config if config is not None else fast()
        self.seed = seed
        self.rng = random.Random(f"{seed}:net")
        self.latency = latency
        self.loss = loss
        self.now = 0.0
        self._seq = 0
        self._inflight: list[tuple[float, int, str, str, bytes, bool]] = []
        #: lazy heap of node deadlines (validated against next_deadline() when popped)
        self._timers: list[tuple[float, int, str]] = []
        self.slots: dict[str, _NodeSlot] = {}
        self.group: dict[str, int] = {}
        #: which nodes each node currently believes failed (to heal exactly those verdicts)
        self.believes_failed: dict[str, set[str]] = {}
        #: which nodes each node has been told alive about (a restarted node knows nobody)
        self.knows: dict[str, set[str]] = {}
        self.delivered = 0
        self.dropped = 0
        #: drop every broadcast (attachment events) instead of delivering it
        self.drop_broadcasts = False
        for i, name in enumerate(names):
            addr = (f"10.0.{i // 250}.{i % 250 + 1}", 7946)
            self.slots[name] = _NodeSlot(name, addr, None)
            self.group[name] = 0
            self.believes_failed[name] = set()
            self.knows[name] = set()
        self._by_addr = {s.addr: s.name for s in self.slots.values()}
        for name in names:
            self._boot(name, high_water=0, cluster_id=None)
        if found:
            self.db(names[0]).found_cluster(now=self.now)
            self.pump(names[0])
        for name in names:
            for other in names:
                if other != name:
                    self._tell_alive(name, other)

    # -- access ----------------------------------------------------------------------------------

    def db(self, name: str) -> NetworkDB:
        db = self.slots[name].db
        assert db is not None, f"{name} is down"
        return db

    @property
    def names(self) -> list[str]:
        return sorted(self.slots)

    @property
    def up(self) -> list[str]:
        return [n for n in self.names if self.slots[n].db is not None]

    def is_up(self, name: str) -> bool:
        return self.slots[name].db is not None

    def events(self, name: str) -> list[object]:
        return self.slots[name].events

    def take_events(self, name: str, kind: type | tuple[type, ...] | None = None) -> list[object]:
        evs = self.slots[name].events
        self.slots[name].events = [] if kind is None else [e for e in evs if not isinstance(e, kind)]
        return evs if kind is None else [e for e in evs if isinstance(e, kind)]

    def can_talk(self, a: str, b: str) -> bool:
        return self.is_up(a) and self.is_up(b) and self.group[a] == self.group[b]

    def view(
        self, name: str, network: str, *, include_hidden: bool = False
    ) -> dict[tuple[str, str], tuple[bytes, str]]:
        """(table, key) -> (value, owner) of the live entries ``name`` shows for ``network``."""
        db = self.db(name)
        out = {}
        for table in db._store.tables(network):
            for e in db.walk_table(table, network, include_hidden=include_hidden):
                out[(e.table, e.key)] = (e.value, e.owner)
        return out

    # -- driving ---------------------------------------------------------------------------------

    def pump(self, name: str) -> None:
        """Collect a node's outputs: schedule its traffic, keep its events."""
        slot = self.slots[name]
        db = slot.db
        if db is None:
            return
        for payload in db.broadcasts_to_send():
            if self.drop_broadcasts:
                self.dropped += 1
                continue
            for other in self.names:
                if other != name and self.can_talk(name, other):
                    self._schedule(other, name, payload, reliable=True)
        for msg in db.messages_to_send():
            target = self._by_addr.get(msg.addr)
            assert target == msg.node, f"{name} addressed {msg.node} at {msg.addr} (that is {target})"
            if self.can_talk(name, target):
                if not msg.reliable and self.loss and self.rng.random() < self.loss:
                    self.dropped += 1
                    continue
                self._schedule(target, name, msg.payload, reliable=msg.reliable)
            else:
                self.dropped += 1
        deadline = db.next_deadline()
        if deadline is not None:
            self._seq += 1
            heapq.heappush(self._timers, (deadline, self._seq, name))
        while (ev := db.next_event()) is not None:
            if isinstance(ev, HighWaterRaised):
                slot.high_water = ev.high_water
            elif isinstance(ev, ClusterIdSet):
                slot.cluster_id = ev.cluster_id
            slot.events.append(ev)

    def _schedule(self, dst: str, src: str, payload: bytes, *, reliable: bool) -> None:
        self._seq += 1
        heapq.heappush(self._inflight, (self.now + self.latency, self._seq, dst, src, payload, reliable))

    def pump_all(self) -> None:
        for name in self.up:
            self.pump(name)

    def _next_timer(self) -> tuple[float, str] | None:
        while self._timers:
            at, _, name = self._timers[0]
            db = self.slots[name].db
            if db is not None and db.next_deadline() == at:
                return at, name
            heapq.heappop(self._timers)
        return None

    def run_until(self, t: float) -> None:
        self.pump_all()
        while True:
            timer = self._next_timer()
            msg_at = self._inflight[0][0] if self._inflight else None
            if timer is not None and (msg_at is None or timer[0] < msg_at):
                if timer[0] > t:
                    break
                heapq.heappop(self._timers)
                self.now = max(self.now, timer[0])
                self.db(timer[1]).handle_timer(now=self.now)
                self.pump(timer[1])
                continue
            if msg_at is None or msg_at > t:
                break
            self.now = max(self.now, msg_at)
            _, _, dst, src, payload, _ = heapq.heappop(self._inflight)
            if not self.can_talk(src, dst):
                self.dropped += 1
                continue
            self.delivered += 1
            self.db(dst).receive(self.slots[src].addr, payload, now=self.now)
            self.pump(dst)
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def settle(self) -> None:
        self.run_for(settle_time(self.config, len(self.up)))

    def call(self, name: str, method: str, *args: object, **kwargs: object) -> object:
        """Invoke a NetworkDB method on ``name`` at the current time, then collect its outputs."""
        if method not in ("watch", "unwatch"):
            kwargs["now"] = self.now
        result = getattr(self.db(name), method)(*args, **kwargs)
        self.pump(name)
        return result

    # -- membership and faults -------------------------------------------------------------------

    def _tell_failed(self, observer: str, subject: str) -> None:
        if subject in self.believes_failed[observer]:
            return
        self.believes_failed[observer].add(subject)
        self.db(observer).node_failed(subject, incarnation=self.slots[subject].incarnation, now=self.now)
        self.pump(observer)

    def _tell_alive(self, observer: str, subject: str) -> None:
        self.believes_failed[observer].discard(subject)
        self.knows[observer].add(subject)
        s = self.slots[subject]
        self.db(observer).node_alive(subject, s.addr, incarnation=s.incarnation, now=self.now)
        self.pump(observer)

    def partition(self, *groups: list[str]) -> None:
        """Cut the cluster into groups (unlisted nodes form one more group); each side sees the other failed."""
        listed = {n for g in groups for n in g}
        for i, g in enumerate(groups):
            for n in g:
                self.group[n] = i + 1
        for n in self.names:
            if n not in listed:
                self.group[n] = 0
        for a in self.up:
            for b in self.up:
                if a != b and self.group[a] != self.group[b]:
                    self._tell_failed(a, b)

    def heal(self) -> None:
        """Join all groups; nodes seen failed refute with a higher incarnation and are seen alive."""
        for n in self.names:
            self.group[n] = 0
        refuted = {b for a in self.up for b in self.believes_failed[a] if self.is_up(b)}
        for b in sorted(refuted):
            self.slots[b].incarnation += 1
        for a in self.up:
            for b in self.up:
                if b != a and (b in self.believes_failed[a] or b not in self.knows[a]):
                    self._tell_alive(a, b)

    def crash(self, name: str) -> None:
        """Stop ``name`` abruptly (its agent state is saved); everyone reachable sees it failed."""
        slot = self.slots[name]
        db = self.db(name)
        slot.saved_networks = db.networks()
        slot.saved_entries = [
            (e.table, e.network, e.key, e.value)
            for net in db.networks()
            for e in db._store.entries(net)
            if e.owner == name and not e.deleted
        ]
        slot.db = None
        for other in self.up:
            if self.group[other] == self.group[name]:
                self._tell_failed(other, name)

    def restart(self, name: str, *, state: bool = True) -> list[Entry]:
        """Restart a crashed node under the same name, with its state directory or an empty one; return
        the entries it re-asserted."""
        slot = self.slots[name]
        assert slot.db is None
        slot.incarnation += 1
        if not state:
            slot.high_water, slot.cluster_id = 0, ""
            slot.saved_entries, slot.saved_networks = [], []
        self._boot(name, high_water=slot.high_water, cluster_id=slot.cluster_id or None)
        db = self.db(name)
        for net in slot.saved_networks:
            db.join_network(net, now=self.now)
        reasserted = [
            db.put_entry(t, net, key, value, now=self.now) for t, net, key, value in slot.saved_entries
        ]
        self.believes_failed[name] = set()
        self.knows[name] = set()
        self.pump(name)
        for other in self.up:
            if other != name and self.group[other] == self.group[name]:
                self._tell_alive(name, other)
                self._tell_alive(other, name)
        return reasserted

    def leave(self, name: str) -> None:
        """Graceful leave of the cluster: everyone sees ``name`` left; the node stops."""
        self.slots[name].db = None
        for other in self.up:
            self.believes_failed[other].discard(name)
            self.db(other).node_left(name, now=self.now)
            self.pump(other)

    def _boot(self, name: str, *, high_water: int, cluster_id: str | None) -> None:
        slot = self.slots[name]
        slot.db = NetworkDB(
            self.config,
            name=name,
            rng=random.Random(f"{self.seed}:{name}:{slot.incarnation}"),
            now=self.now,
            cluster_id=cluster_id,
            high_water=high_water,
        )
        self.pump(name)
