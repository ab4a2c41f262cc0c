"""``NetworkDB``: the facade of the partitioned, convergent table store (a pure, sans-IO core).

Theory of operation. House rules (style.md 3.3): no I/O, clock or global randomness; every input takes a
keyword-only ``now`` (monotonic seconds); outputs are drained; remote garbage never raises out of
``receive``; local misuse raises ``LocalProtocolError`` and changes nothing.

Wiring to the gossip core (``docs/gossip-core.md``). The shell feeds ``handle_gossip_event`` every Swim
event (or calls ``receive``/``node_*`` directly) and hands the outputs to Swim:

    broadcasts_to_send()  -> swim.send_user(payload)                      attachment events, cluster-wide
    messages_to_send()    -> swim.send_user_to(m.addr, m.payload, reliable=m.reliable,
                             compress=False for UDP: see flush_to)
                             UDP table gossip and small requests; TCP for bulk/state syncs and big entries
                             (``flush_to(swim, now=)`` does both)
    next_event()          -> watch events, NetworkSynced, requests/responses, HighWaterRaised, ...
    next_deadline() / handle_timer(now=)

Anti-entropy uses reliable (TCP) user messages, not a stream output of its own: a sync request and its
answer are two one-way messages matched by ``sync_id``, and the answer is the acknowledgement.

Data. Entries of joined networks only (``TableStore``), all attachment records of the cluster
(``AttachmentBook``), node verdicts (``NodeBook``), one Lamport clock (``lamport.py``). Rules, each
fixing a libnetwork failure (libnetwork.md section 9):

1. Merge is last-writer-wins by (ltime, owner) with tombstones winning ties (``table.merge``).
2. Admission by attachment: an entry of owner X in network N is refused (and a stored one removed) while
   X's attachment record for N is a leave, or when it predates X's current attachment epoch
   (``Attachment.admits``); an unknown attachment admits (the record may simply not have arrived yet). Attachments travel in broadcasts, in every bulk sync (moby#53437) and in
   the state sync / push-pull, so a missed broadcast is repaired by anti-entropy alone.
3. Failure hides, never deletes (moby#53141): a failed owner's entries are flagged hidden (watchers see
   deletes), kept, still merged and synced (flagged hidden on the wire), and revealed when the owner is
   alive again. A graceful leave or a reap removes them, and later copies are refused while the node is
   remembered as gone.
4. Owner authority: a node is the only writer of its own records. When it learns a version of one of its
   own entries (or attachments) newer than what it holds, that version comes from a previous life (a
   restart that lost the clock or the state directory, or a copy that outlived its tombstone); the node
   re-asserts what it holds now at a fresh, higher ltime: its current value, or a tombstone if it holds
   nothing. With the persisted high-water mark this never fires after a clean restart; without it, it is
   what makes post-restart writes win (ipam.md R2) and what deletes a forgotten node's entries
   cluster-wide. A shell restoring entries from its state directory must do so before feeding inputs.
5. Queues: see ``broadcast.py`` (supersede only by newer, local first, bounded).
6. Cluster id: every message carries the sender's; a message with another non-empty id is refused
   (``PeerRefused``); a node without one adopts the first it sees (``ClusterIdSet``).

Timers (one ``DeadlineHeap``): gossip tick (armed only while some queue has peers to send to), bulk-sync
and state-sync rounds (random initial stagger), one reap deadline per tombstone and per leave record,
one forget deadline per departed node, sync and request timeouts.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from meshnet.core.clock import DeadlineHeap
from meshnet.core.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from meshnet.gossip import events as gev

from . import codec
from .broadcast import NetworkQueue
from .config import GLOBAL_NETWORK, NetworkDBConfig
from .entry import Attachment, Entry
from .events import NetworkDBEvent, NetworkSynced, RequestId, WatchId
from .lamport import LamportClock
from .membership import Addr, AttachmentBook, NodeBook, NodeState
from .messages import Envelope, PushPullState, Request, Response
from .replication import OutboundMessage, Replica, _Network, attachment_to_wire
from .sync import PendingSync, Rotation
from .table import TableStore
from .watch import Watchers, WatchFilter

__all__ = ["NetworkDB", "OutboundMessage"]


class _UserSender(Protocol):
    def send_user(self, payload: bytes, *, now: float) -> None: ...
    def send_user_to(
        self, addr: Addr, payload: bytes, *, reliable: bool = False, compress: bool | None = None, now: float
    ) -> None: ...


class NetworkDB(Replica):
    """One node's NetworkDB. See the module docstring for the rules and the wiring."""

    def __init__(
        self,
        config: NetworkDBConfig | None = None,
        *,
        name: str,
        rng: random.Random,
        now: float,
        cluster_id: str | None = None,
        high_water: int = 0,
    ) -> None:
        """``name`` is this node's gossip member name; ``high_water`` the persisted Lamport high-water
        mark (0 for a new state directory); ``cluster_id`` the persisted or founding cluster id.
        Emits ``HighWaterRaised`` at once: persist it before sending anything."""
        self.config = config if config is not None else NetworkDBConfig()
        cfg = self.config
        self._limits = codec.Limits.from_config(cfg)
        self._check_str(name, "node name", cfg.max_node_name_bytes, allow_empty=False)
        if cluster_id is not None:
            self._check_str(cluster_id, "cluster id", 64, allow_empty=True)
        self.name = name
        self._rng = rng
        self._clock = LamportClock(start=high_water, block=cfg.high_water_block)
        self._cluster_id = cluster_id or ""
        self._store = TableStore()
        self._atts = AttachmentBook()
        self._nodes = NodeBook()
        self._nets: dict[str, _Network] = {}
        self._left_floor: dict[str, int] = {}
        self._watchers = Watchers()
        self._timers = DeadlineHeap()
        self._rotation = Rotation()
        self._pending_syncs: dict[int, PendingSync] = {}
        self._pending_requests: dict[int, str] = {}
        self._next_id = rng.getrandbits(32)
        self._bootstrap_left = cfg.bootstrap_state_syncs
        self._peer_cache: dict[str, list[str]] = {}
        self._refused: set[tuple[str, str]] = set()
        self._broadcasts: list[bytes] = []
        self._messages: list[OutboundMessage] = []
        self._events: deque[NetworkDBEvent] = deque()
        self._counters: dict[str, int] = {}
        self._timers.set("bulk_sync", now + rng.uniform(0, cfg.bulk_sync_interval))
        self._timers.set("state_sync", now + rng.uniform(0, cfg.state_sync_interval))
        if cfg.join_global:
            self.join_network(GLOBAL_NETWORK, now=now)
        self._done()

    # ------------------------------------------------------------------ identity, reads

    @property
    def cluster_id(self) -> str:
        """The cluster id ("" until founded or adopted)."""
        return self._cluster_id

    @property
    def state_high_water(self) -> int:
        """The Lamport high-water mark to persist; pass it as ``high_water`` after a restart."""
        return self._clock.high_water

    @property
    def ltime(self) -> int:
        return self._clock.time

    def found_cluster(self, *, now: float) -> str:
        """Make this node the founder: create a random 128-bit cluster id (once). Emits ``ClusterIdSet``."""
        if not self._cluster_id:
            self._set_cluster_id(f"{self._rng.getrandbits(128):032x}")
        return self._cluster_id

    def networks(self) -> list[str]:
        """Networks this node has joined, sorted."""
        return sorted(self._nets)

    def attachments(self, network: str | None = None) -> list[Attachment]:
        """Attachment records known (of one network, or all), sorted."""
        return self._atts.of_network(network) if network is not None else self._atts.all()

    def node_state(self, name: str) -> str | None:
        """The state of a node in this view: "alive", "failed", "left", or None if unknown."""
        state = self._nodes.state(name)
        return None if state is None else state.value

    def get_entry(self, table: str, network: str, key: str, *, include_hidden: bool = False) -> Entry | None:
        """The live entry of a slot, or None (tombstones never; hidden ones only with ``include_hidden``)."""
        e = self._store.get((network, table, key))
        return e if e is not None and e.is_visible(include_hidden=include_hidden) else None

    def walk_table(
        self,
        table: str,
        network: str | None = None,
        *,
        include_hidden: bool = False,
        include_deleted: bool = False,
    ) -> list[Entry]:
        """Entries of ``table`` (in one network or all), sorted by network and key."""
        out = []
        for net in [network] if network is not None else self._store.networks():
            for e in self._store.entries(net, table):
                if e.deleted and not include_deleted:
                    continue
                if e.hidden and not include_hidden:
                    continue
                out.append(e)
        return out

    # ------------------------------------------------------------------ local writes

    def join_network(self, network: str, *, now: float) -> None:
        """Attach to ``network``: broadcast a join record and bulk-sync with its known peers (all of them,
        or ``join_sync_max_peers``; ``join_sync_first_wave`` first, the rest after the first answer);
        ``NetworkSynced`` follows when they all answered or timed out. Idempotent."""
        self._check_str(network, "network", self.config.max_network_bytes)
        if network in self._nets:
            return
        floor = self._left_floor.get(network, 0)
        own = self._atts.get(self.name, network)
        if own is not None:
            floor = max(floor, own.ltime if own.leaving else own.floor)
        att = Attachment(self.name, network, self._clock.tick(), leaving=False, floor=floor)
        self._put_attachment(att)
        net = _Network(queue=NetworkQueue(max_len=self.config.max_queue_len))
        self._nets[network] = net
        self._broadcast_attachment(att, now)
        peers = self._targets(network)
        cap = self.config.join_sync_max_peers
        if cap and len(peers) > cap:
            peers = sorted(self._rng.sample(peers, cap))
        if not peers:
            net.synced = True
            self._events.append(NetworkSynced(network, (), ()))
        net.join_pending.update(peers)
        first = self._rng.sample(peers, min(len(peers), self.config.join_sync_first_wave))
        net.join_later = sorted(set(peers) - set(first))
        for p in sorted(first):
            self._start_sync(p, (network,), "join", now)
        self._done()

    def leave_network(self, network: str, *, now: float) -> None:
        """Detach from ``network``: drop its entries (watchers get deletes) and broadcast a leave record;
        peers then remove this node's entries of it. Raises ``LocalProtocolError`` if not joined."""
        if network not in self._nets:
            raise LocalProtocolError(f"not joined to network {network!r}")
        for e in self._store.drop_network(network):
            self._timers.cancel(("reap_entry", e.slot))
            self._events.extend(self._watchers.diff(e, None))
        del self._nets[network]
        self._rotation.forget(network)
        own = self._atts.get(self.name, network)
        ltime = self._clock.tick()
        att = Attachment(
            self.name,
            network,
            ltime,
            leaving=True,
            floor=own.floor if own is not None else 0,
            reap_at=now + self.config.reap_network_interval,
        )
        self._left_floor[network] = ltime
        self._put_attachment(att)
        self._broadcast_attachment(att, now)
        self._done()

    def create_entry(self, table: str, network: str, key: str, value: bytes, *, now: float) -> Entry:
        """Create an entry (over nothing or a tombstone). Raises ``LocalProtocolError`` if a live one
        exists (hidden or not), the network is not joined, or a size limit is exceeded."""
        cur = self._check_write(table, network, key, value)
        if cur is not None and cur.is_live:
            hidden = " (hidden: its owner is failed)" if cur.hidden else ""
            raise LocalProtocolError(
                f"entry {table}/{network!r}/{key} exists, owned by {cur.owner}{hidden}; use update_entry"
            )
        self._check_capacity(table, network)
        return self._write(table, network, key, value, cur, deleted=False, now=now)

    def update_entry(self, table: str, network: str, key: str, value: bytes, *, now: float) -> Entry:
        """Replace a live entry's value; this node becomes its owner. Raises if there is none."""
        cur = self._check_write(table, network, key, value)
        if cur is None or cur.deleted:
            raise LocalProtocolError(f"no entry {table}/{network!r}/{key} to update; use create_entry")
        return self._write(table, network, key, value, cur, deleted=False, now=now)

    def put_entry(self, table: str, network: str, key: str, value: bytes, *, now: float) -> Entry:
        """Create or update."""
        cur = self._check_write(table, network, key, value)
        if cur is None or cur.deleted:
            self._check_capacity(table, network)
        return self._write(table, network, key, value, cur, deleted=False, now=now)

    def put_entries(
        self, table: str, network: str, items: Sequence[tuple[str, bytes]], *, now: float
    ) -> list[Entry]:
        """``put_entry`` for several keys of one table at once, all or nothing: every item is checked
        (limits, distinct keys, table capacity) before any is written. Same events and wire traffic as
        the single puts; a shell persists and answers them together."""
        curs: list[Entry | None] = []
        seen: set[str] = set()
        new = 0
        for key, value in items:
            cur = self._check_write(table, network, key, value)
            if key in seen:
                raise LocalProtocolError(f"key {key} given twice in one batch")
            seen.add(key)
            curs.append(cur)
            new += cur is None or cur.deleted
        if new and self._store.live_count(network, table) + new > self.config.max_table_entries:
            raise LocalProtocolError(
                f"table {table} of network {network!r} cannot take {new} more live entries "
                f"(max_table_entries {self.config.max_table_entries})"
            )
        return [
            self._write(table, network, key, value, cur, deleted=False, now=now)
            for (key, value), cur in zip(items, curs, strict=True)
        ]

    def delete_entry(self, table: str, network: str, key: str, *, now: float) -> Entry:
        """Replace a live entry by a tombstone (keeping the value) reaped after ``reap_entry_interval``."""
        cur = self._check_write(table, network, key, b"")
        if cur is None or cur.deleted:
            raise LocalProtocolError(f"no entry {table}/{network!r}/{key} to delete")
        return self._write(table, network, key, cur.value, cur, deleted=True, now=now)

    # ------------------------------------------------------------------ watch

    def watch(
        self,
        table: str | None = None,
        network: str | None = None,
        key: str | None = None,
        *,
        include_hidden: bool = False,
    ) -> WatchId:
        """Subscribe to changes matching the filter (``None`` = any). The view's current entries are
        queued at once as ``EntryCreated`` (replay); later changes follow as events for this id."""
        wid = self._watchers.add(WatchFilter(table, network, key, include_hidden))
        self._events.extend(self._watchers.replay(wid, self._store.entries(network, table)))
        return wid

    def unwatch(self, watch_id: WatchId) -> None:
        """Stop a watch; its events still queued are dropped."""
        self._watchers.remove(watch_id)

    # ------------------------------------------------------------------ direct messages

    def request(self, node: str, payload: bytes, *, now: float, reliable: bool = False) -> RequestId:
        """Send ``payload`` to ``node``; ``ResponseReceived`` or ``RequestTimedOut`` follows."""
        addr = self._nodes.addr(node)
        if addr is None:
            raise LocalProtocolError(f"no address known for node {node!r}")
        if len(payload) > self.config.max_request_bytes:
            raise LocalProtocolError(f"request payload of {len(payload)} bytes exceeds max_request_bytes")
        rid = self._new_id()
        self._pending_requests[rid] = node
        self._timers.set(("request_timeout", rid), now + self.config.request_timeout)
        self._send(node, codec.encode(Envelope(self.name, self._cluster_id, Request(rid, payload))), reliable)
        self._done()
        return RequestId(rid)

    def respond(
        self, node: str, request_id: RequestId, payload: bytes, *, now: float, reliable: bool = False
    ) -> None:
        """Answer a ``RequestReceived``."""
        if len(payload) > self.config.max_request_bytes:
            raise LocalProtocolError(f"response payload of {len(payload)} bytes exceeds max_request_bytes")
        if self._nodes.addr(node) is None:
            raise LocalProtocolError(f"no address known for node {node!r}")
        env = Envelope(self.name, self._cluster_id, Response(request_id, payload))
        self._send(node, codec.encode(env), reliable)

    # ------------------------------------------------------------------ inputs from the gossip layer

    def handle_gossip_event(self, event: object, *, now: float) -> None:
        """Feed one Swim event; events NetworkDB does not care about are ignored."""
        if isinstance(event, gev.UserMessageReceived):
            self.receive(event.src, event.payload, now=now)
        elif isinstance(event, gev.MemberJoined | gev.MemberUpdated):
            m = event.member
            self.node_alive(m.name, (m.addr, m.port), incarnation=m.incarnation, now=now)
        elif isinstance(event, gev.MemberFailed):
            self.node_failed(event.member.name, incarnation=event.member.incarnation, now=now)
        elif isinstance(event, gev.MemberLeft):
            self.node_left(event.member.name, now=now)
        elif isinstance(event, gev.MemberReaped):
            self.node_left(event.name, now=now)

    def node_alive(self, name: str, addr: Addr | None, *, incarnation: int, now: float) -> None:
        """The gossip layer sees ``name`` alive: reveal its entries; sync with it if it returned."""
        if name == self.name:
            return
        rec = self._nodes.get(name)
        prev = rec.state if rec is not None else None
        if prev is NodeState.FAILED and rec is not None and incarnation < rec.incarnation:
            self._count("stale_member_events")
            return
        self._nodes.set_alive(name, addr, incarnation)
        self._timers.cancel(("forget", name))
        if prev is NodeState.ALIVE:
            return
        self._peer_cache.clear()
        for slot in self._store.slots_of(name):
            e = self._store.get(slot)
            if e is not None and e.hidden:
                self._put(e.with_(hidden=False), e)
        common = [a.network for a in self._atts.of_node(name) if not a.leaving and a.network in self._nets]
        if prev is NodeState.FAILED:
            for network in common:
                self._rotation.add(network, name, front=True)
            fanout = self.config.return_sync_fanout
            alive = max(1, self._nodes.alive_count)
            if common and self._rng.random() < min(1.0, fanout / alive):
                self._start_sync(name, tuple(common), "return", now)
        elif prev is None and self._bootstrap_left > 0:
            self._bootstrap_left -= 1
            self._start_state_sync(name, now)
        for network in common:
            self._peer_appeared(network, name, now)
        self._arm_gossip(now)
        self._done()

    def node_failed(self, name: str, *, incarnation: int, now: float) -> None:
        """The gossip layer declared ``name`` failed: hide its entries (watchers see deletes)."""
        if name == self.name:
            return
        rec = self._nodes.get(name)
        if rec is not None and rec.state is NodeState.LEFT:
            return
        if rec is not None and rec.state is NodeState.ALIVE and incarnation < rec.incarnation:
            self._count("stale_member_events")
            return
        if rec is not None and rec.state is NodeState.FAILED:
            rec.incarnation = max(rec.incarnation, incarnation)
            return
        self._nodes.set_failed(name, incarnation)
        self._peer_cache.clear()
        for slot in self._store.slots_of(name):
            e = self._store.get(slot)
            if e is not None and not e.hidden:
                self._put(e.with_(hidden=True), e)
        self._done()

    def node_left(self, name: str, *, now: float) -> None:
        """``name`` left gracefully or was reaped: remove its entries and attachments for good."""
        if name == self.name:
            return
        self._nodes.set_left(name)
        self._peer_cache.clear()
        self._timers.set(("forget", name), now + self.config.node_forget_interval)
        for slot in self._store.slots_of(name):
            self._remove_entry(slot)
        for att in self._atts.of_node(name):
            self._atts.remove(att.node, att.network)
            self._timers.cancel(("reap_attachment", att.node, att.network))
        self._done()

    def receive(self, src: Addr, data: bytes, *, now: float) -> None:
        """A gossip-layer user message (or push-pull user state). Payloads without NetworkDB's prefix
        are ignored; malformed ones are counted and reported as ``MessageRejected``; never raises."""
        if not codec.is_networkdb(data):
            self._count("foreign_payloads")
            return
        self._count("messages_received")
        try:
            env = codec.decode(data, self._limits, skip=self._held)
        except DecodeError as exc:
            self._reject(src, f"decode: {exc}")
            return
        try:
            self._dispatch(src, env, now)
        except RemoteProtocolError as exc:
            self._reject(src, str(exc))
        self._done()

    def push_pull_state(self, *, now: float) -> bytes:
        """Every attachment record, as gossip-layer push-pull user state."""
        atts = tuple(attachment_to_wire(a, now) for a in self._atts.all())
        return codec.encode(Envelope(self.name, self._cluster_id, PushPullState(atts)))

    def receive_push_pull_state(self, src: Addr, data: bytes, *, now: float) -> None:
        """A peer's ``push_pull_state``."""
        self.receive(src, data, now=now)

    def handle_timer(self, *, now: float) -> None:
        """Run every timer due at ``now``."""
        for _ in range(8):
            due = self._timers.pop_due(now)
            if not due:
                break
            for key in due:
                self._fire(key, now)
        self._done()

    # ------------------------------------------------------------------ outputs

    def broadcasts_to_send(self) -> list[bytes]:
        """Payloads for ``swim.send_user`` (gossiped cluster-wide)."""
        out, self._broadcasts = self._broadcasts, []
        return out

    def messages_to_send(self) -> list[OutboundMessage]:
        """Payloads for one node each (``swim.send_user_to``)."""
        out, self._messages = self._messages, []
        return out

    def flush_to(self, swim: _UserSender, *, now: float) -> None:
        """Hand every pending output to a gossip core (``Swim`` or anything with its two user-message
        methods): broadcasts to ``send_user``, direct messages to ``send_user_to``. Values only; the
        shell then drains the gossip core as usual."""
        for payload in self.broadcasts_to_send():
            swim.send_user(payload, now=now)
        for m in self.messages_to_send():
            # UDP table gossip goes out uncompressed: short msgpack entries gain little from LZW, which
            # costs about a millisecond per datagram in pure Python (TCP bulk syncs keep the config's choice).
            swim.send_user_to(
                m.addr, m.payload, reliable=m.reliable, compress=None if m.reliable else False, now=now
            )

    def next_event(self) -> NetworkDBEvent | None:
        while self._events:
            ev = self._events.popleft()
            wid = getattr(ev, "watch_id", None)
            if wid is not None and wid not in self._watchers:
                continue
            return ev
        return None

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    def stats(self, network: str | None = None) -> dict[str, object]:
        """Counters and sizes, for the whole node or one joined network."""
        if network is not None:
            net = self._nets.get(network)
            entries = list(self._store.entries(network))
            out: dict[str, object] = {
                "network": network,
                "joined": net is not None,
                "entries": sum(1 for e in entries if not e.deleted),
                "tombstones": sum(1 for e in entries if e.deleted),
                "hidden": sum(1 for e in entries if e.hidden and not e.deleted),
                "peers": len(self.peers(network)),
            }
            if net is not None:
                out.update(synced=net.synced, queue_len=len(net.queue), queue=net.queue.stats.as_dict())
            return out
        out = dict(sorted(self._counters.items()))
        out.update(
            networks=len(self._nets),
            entries=sum(1 for e in self._store.entries() if not e.deleted),
            tombstones=sum(1 for e in self._store.entries() if e.deleted),
            attachments=len(self._atts),
            nodes=len(self._nodes),
            queue_len=sum(len(n.queue) for n in self._nets.values()),
            ltime=self._clock.time,
            high_water=self._clock.high_water,
            pending_syncs=len(self._pending_syncs),
            pending_requests=len(self._pending_requests),
        )
        return out

    # ------------------------------------------------------------------ internals: local checks and writes

    def _check_str(self, s: object, what: str, max_bytes: int, *, allow_empty: bool = True) -> None:
        if not isinstance(s, str):
            raise LocalProtocolError(f"{what} must be a str, got {type(s).__name__}")
        if not s and not allow_empty:
            raise LocalProtocolError(f"{what} must not be empty")
        try:
            n = len(s.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"{what} is not valid UTF-8: {exc}") from exc
        if n > max_bytes:
            raise LocalProtocolError(f"{what} is {n} bytes; the limit is {max_bytes}")

    def _check_write(self, table: str, network: str, key: str, value: bytes) -> Entry | None:
        cfg = self.config
        self._check_str(table, "table", cfg.max_table_bytes, allow_empty=False)
        self._check_str(network, "network", cfg.max_network_bytes)
        self._check_str(key, "key", cfg.max_key_bytes, allow_empty=False)
        if not isinstance(value, bytes):
            raise LocalProtocolError(f"value must be bytes, got {type(value).__name__}")
        if len(value) > cfg.max_value_bytes:
            raise LocalProtocolError(f"value is {len(value)} bytes; the limit is {cfg.max_value_bytes}")
        if network not in self._nets:
            raise LocalProtocolError(f"join network {network!r} before writing to it")
        return self._store.get((network, table, key))

    def _check_capacity(self, table: str, network: str) -> None:
        if self._store.live_count(network, table) >= self.config.max_table_entries:
            raise LocalProtocolError(
                f"table {table} of network {network!r} holds max_table_entries "
                f"({self.config.max_table_entries}) live entries"
            )

    def _write(
        self,
        table: str,
        network: str,
        key: str,
        value: bytes,
        cur: Entry | None,
        *,
        deleted: bool,
        now: float,
    ) -> Entry:
        reap_at = now + self.config.reap_entry_interval if deleted else None
        e = Entry(table, network, key, value, self.name, self._clock.tick(), deleted, reap_at)
        self._put(e, cur)
        self._enqueue(e, now, is_local=True)
        self._done()
        return e
