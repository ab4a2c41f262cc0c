"""The replication engine behind ``NetworkDB``: merging, receiving, anti-entropy, gossip and timers.

Theory of operation: ``Replica`` holds the state of one node's NetworkDB and every rule that decides
what a remote record does to it; ``store.NetworkDB`` (the facade) adds the public API on top. The rules
(numbered as in ``store.py``):

- merge (rule 1): ``_merge_entry`` admits a remote entry (owner not departed, attachment admits its
  ltime), computes its hidden flag from the owner's state (failed, or unknown and flagged hidden by the
  sender), and keeps it if its precedence is greater; equal precedence only takes the earlier reap time;
- admission by attachment (rule 2): ``_merge_attachment`` merges a record and removes the owner's stored
  entries that the new record no longer admits; a newly attached peer is rotated into the bulk-sync
  order and, for a network that never completed a sync, synced at once (bootstrap);
- owner authority (rule 4): ``_own_entry_seen``/``_own_attachment_seen``;
- relaying: an entry learned by gossip is re-queued (as a rebroadcast) once the network finished its
  join sync; one learned by bulk sync only while the queue is shorter than
  ``max_queue_len_broadcast_on_sync``; attachment records learned by broadcast are re-broadcast once;
- anti-entropy: a ``BulkSync`` request carries attachments and per-network digests; the peer answers for
  the networks both hold with its attachments and the entries of every network whose digest differs,
  and the requester pushes its own entries of those; the answer's last part completes the pending sync
  (see ``sync.py`` for purposes, retries and peer rotation); ``StateSync`` exchanges every attachment
  record with one random node per period and with the first nodes seen;
- gossip: every ``gossip_interval`` each joined network's queue is drained in datagram-sized batches
  to ``gossip_nodes`` random peers: ``gossip_packets`` of them, more (up to ``max_gossip_packets``) when
  one transmit of every queued item needs more; local writes are sent ``retransmit_mult`` x
  ceil(log10(n + 1)) times, rebroadcasts ``relay_retransmit_mult`` x that; the timer is armed only while
  some queue has a peer to go to, so an idle node has no gossip deadline;
- receive fast path: gossip delivers each entry to each node several times, so ``_held`` looks at every
  entry of a ``TableEvents`` before it is decoded and drops the copies whose slot already holds the same
  live version (or a newer ltime): counted as ``duplicate_entries`` / ``stale_entries``.

Every input ends with ``_done()``, which turns a raised Lamport high-water mark into ``HighWaterRaised``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from meshnet.core.clock import DeadlineHeap
from meshnet.core.errors import RemoteProtocolError

from . import codec
from .broadcast import NetworkQueue
from .config import NetworkDBConfig, retransmit_limit, state_sync_period
from .entry import Attachment, Entry, Slot
from .events import (
    ClusterIdSet,
    HighWaterRaised,
    MessageRejected,
    NetworkDBEvent,
    NetworkSynced,
    PeerRefused,
    RequestId,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
)
from .lamport import LamportClock
from .membership import Addr, AttachmentBook, NodeBook, NodeState
from .messages import (
    AttachmentEvents,
    BulkSync,
    Envelope,
    PushPullState,
    Request,
    Response,
    StateSync,
    SyncMode,
    TableEvents,
    WireAttachment,
    WireEntry,
)
from .sync import PendingSync, Rotation
from .table import TableStore, compare
from .watch import Watchers

__all__ = ["Replica", "OutboundMessage", "to_wire", "attachment_to_wire"]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A payload for one node: ``swim.send_user_to(addr, payload, reliable=reliable)``."""

    node: str
    addr: Addr
    payload: bytes
    reliable: bool


@dataclass(slots=True)
class _Network:
    """Local state of a joined network."""

    queue: NetworkQueue
    synced: bool = False
    ever_synced: bool = False
    join_pending: set[str] = field(default_factory=set)
    join_later: list[str] = field(default_factory=list)
    join_answered: list[str] = field(default_factory=list)
    join_failed: list[str] = field(default_factory=list)


def to_wire(e: Entry, now: float) -> WireEntry:
    """An entry as sent: a tombstone's reap instant becomes its remaining time in milliseconds."""
    reap_ms = int(e.remaining_reap(now=now) * 1000) if e.deleted else 0
    return WireEntry(e.table, e.key, e.value, e.owner, e.ltime, e.deleted, e.hidden, reap_ms)


def attachment_to_wire(a: Attachment, now: float) -> WireAttachment:
    reap_ms = int(max(0.0, a.reap_at - now) * 1000) if a.leaving and a.reap_at is not None else 0
    return WireAttachment(a.node, a.network, a.ltime, a.leaving, a.floor, reap_ms)


class Replica:
    """State and replication rules of one node's NetworkDB (the facade is ``store.NetworkDB``)."""

    config: NetworkDBConfig
    name: str
    _rng: random.Random
    _limits: codec.Limits
    _clock: LamportClock
    _cluster_id: str
    _store: TableStore
    _atts: AttachmentBook
    _nodes: NodeBook
    _nets: dict[str, _Network]
    _left_floor: dict[str, int]
    _watchers: Watchers
    _timers: DeadlineHeap
    _rotation: Rotation
    _pending_syncs: dict[int, PendingSync]
    _pending_requests: dict[int, str]
    _next_id: int
    _peer_cache: dict[str, list[str]]
    _refused: set[tuple[str, str]]
    _broadcasts: list[bytes]
    _messages: list[OutboundMessage]
    _events: deque[NetworkDBEvent]
    _counters: dict[str, int]

    def peers(self, network: str) -> list[str]:
        """Other nodes attached to ``network`` and not failed or gone, sorted."""
        return list(self._peer_list(network))

    def _peer_list(self, network: str) -> list[str]:
        """``peers`` without the copy (cached until an attachment or node state changes)."""
        cached = self._peer_cache.get(network)
        if cached is None:
            cached = [n for n in self._atts.members(network) if n != self.name and self._is_peer_state(n)]
            self._peer_cache[network] = cached
        return cached

    def _is_peer_state(self, node: str) -> bool:
        state = self._nodes.state(node)
        return state is not NodeState.FAILED and state is not NodeState.LEFT

    def _targets(self, network: str) -> list[str]:
        """Peers of ``network`` this node can address."""
        return [p for p in self._peer_list(network) if self._nodes.addr(p) is not None]

    # ------------------------------------------------------------------ internals: writes and merges

    def _put(self, e: Entry, prev: Entry | None) -> None:
        """Store ``e`` over ``prev``: reap timer and watch events."""
        self._store.put(e)
        key = ("reap_entry", e.slot)
        if e.deleted and e.reap_at is not None:
            if self._timers.get(key) != e.reap_at:
                self._timers.set(key, e.reap_at)
        else:
            self._timers.cancel(key)
        self._events.extend(self._watchers.diff(prev, e))

    def _remove_entry(self, slot: Slot) -> None:
        prev = self._store.remove(slot)
        if prev is not None:
            self._timers.cancel(("reap_entry", slot))
            self._events.extend(self._watchers.diff(prev, None))

    def _enqueue(self, e: Entry, now: float, *, is_local: bool) -> None:
        net = self._nets.get(e.network)
        if net is None:
            return
        raw = codec.encode_wire_entry(to_wire(e, now))
        net.queue.enqueue((e.table, e.key), e.precedence, raw, is_local=is_local)
        self._arm_gossip(now)

    def _merge_entry(self, network: str, w: WireEntry, now: float) -> bool:
        """Merge one remote entry of a joined network; True if it changed the store (relay it)."""
        if w.owner == self.name:
            return self._own_entry_seen(network, w, now)
        state = self._nodes.state(w.owner)
        if state is NodeState.LEFT:
            self._count("dropped_departed_owner")
            return False
        att = self._atts.get(w.owner, network)
        if att is not None and not att.admits(w.ltime):
            self._count("dropped_detached_owner")
            return False
        slot = (network, w.table, w.key)
        cur = self._store.get(slot)
        reap_at = now + min(w.reap_in_ms / 1000.0, self.config.reap_entry_interval) if w.deleted else None
        hidden = state is NodeState.FAILED or (state is None and w.hidden)
        incoming = Entry(w.table, network, w.key, w.value, w.owner, w.ltime, w.deleted, reap_at, hidden)
        if cur is None:
            if not w.deleted and self._store.live_count(network, w.table) >= self.config.max_table_entries:
                self._count("dropped_table_full")
                return False
            self._put(incoming, None)
            return True
        c = compare(incoming, cur)
        if c < 0:
            self._count("stale_entries")
            return False
        if c == 0:
            if reap_at is not None and cur.reap_at is not None and reap_at < cur.reap_at:
                self._put(cur.with_(reap_at=reap_at), cur)
            return False
        if (
            cur.deleted
            and not w.deleted
            and self._store.live_count(network, w.table) >= self.config.max_table_entries
        ):
            self._count("dropped_table_full")
            return False
        self._put(incoming, cur)
        return True

    def _held(self, network: str) -> Callable[[object], bool] | None:
        """The cheap "already have this version" check on the undecoded entries of one gossip message
        (``codec.decode``'s ``skip``). Each ``raw`` is ``[table, key, value, owner, ltime, flags,
        reap_in_ms]``, unvalidated. The predicate is True, so the entry is not even decoded, when the
        merge would certainly ignore it: the stored record of its slot is a live entry of the same owner,
        ltime and value (a duplicate copy: gossip delivers each entry several times), or has a greater
        ltime (a stale copy). Tombstones, ties with another owner or value and unknown slots take the
        full path (reap-time and tie-break rules). Never raises for any ``raw``."""
        tables = self._store.tables_of(network)
        if tables is None or network not in self._nets:
            return None
        counters = self._counters

        def held(raw: object) -> bool:
            if type(raw) is not list or len(raw) != 7:
                return False
            table, key, value, owner, ltime, flags, _ = raw
            if type(table) is not str or type(key) is not str or type(ltime) is not int:
                return False
            keys = tables.get(table)
            cur = None if keys is None else keys.get(key)
            if cur is None:
                return False
            if cur.ltime > ltime:
                counters["stale_entries"] = counters.get("stale_entries", 0) + 1
                return True
            if (
                cur.ltime == ltime
                and (flags == 0 or flags == 2)
                and not cur.deleted
                and cur.owner == owner
                and cur.value == value
            ):
                counters["duplicate_entries"] = counters.get("duplicate_entries", 0) + 1
                return True
            return False

        return held

    def _own_entry_seen(self, network: str, w: WireEntry, now: float) -> bool:
        """Owner authority: a copy of our own entry newer than what we hold is from a previous life."""
        slot = (network, w.table, w.key)
        cur = self._store.get(slot)
        if cur is not None and (w.ltime, w.owner, w.deleted, w.value) <= cur.precedence:
            return False
        self._count("own_entries_reasserted")
        if cur is None and w.deleted:
            reap_at = now + min(w.reap_in_ms / 1000.0, self.config.reap_entry_interval)
            self._put(Entry(w.table, network, w.key, w.value, self.name, w.ltime, True, reap_at), None)
            return True
        ltime = self._clock.tick()
        if cur is None or cur.deleted:
            value = w.value if cur is None else cur.value
            e = Entry(
                w.table, network, w.key, value, self.name, ltime, True, now + self.config.reap_entry_interval
            )
        else:
            e = cur.with_(ltime=ltime, owner=self.name, hidden=False)
        self._put(e, cur)
        self._enqueue(e, now, is_local=True)
        return False

    def _put_attachment(self, att: Attachment) -> None:
        self._atts.put(att)
        self._peer_cache.pop(att.network, None)
        key = ("reap_attachment", att.node, att.network)
        if att.leaving and att.reap_at is not None:
            self._timers.set(key, att.reap_at)
        else:
            self._timers.cancel(key)

    def _merge_attachment(self, w: WireAttachment, now: float) -> bool:
        """Merge one remote attachment record; True if it changed the book (rebroadcast it)."""
        if w.node == self.name:
            return self._own_attachment_seen(w, now)
        if self._nodes.state(w.node) is NodeState.LEFT:
            self._count("dropped_departed_owner")
            return False
        reap_at = now + min(w.reap_in_ms / 1000.0, self.config.reap_network_interval) if w.leaving else None
        incoming = Attachment(w.node, w.network, w.ltime, w.leaving, w.floor, reap_at)
        cur = self._atts.get(w.node, w.network)
        if cur is not None and incoming.precedence <= cur.precedence:
            same = incoming.precedence == cur.precedence
            if same and reap_at is not None and cur.reap_at is not None and reap_at < cur.reap_at:
                self._put_attachment(cur.with_(reap_at=reap_at))
            return False
        self._put_attachment(incoming)
        if w.network in self._nets:
            for slot in self._store.slots_of(w.node, w.network):
                e = self._store.get(slot)
                if e is not None and not incoming.admits(e.ltime):
                    self._remove_entry(slot)
            if not w.leaving and (cur is None or cur.leaving):
                self._peer_appeared(w.network, w.node, now)
        return True

    def _own_attachment_seen(self, w: WireAttachment, now: float) -> bool:
        """Owner authority for our own attachment records (see ``_own_entry_seen``)."""
        cur = self._atts.get(self.name, w.network)
        if cur is not None and (w.ltime, w.leaving, w.floor) <= cur.precedence:
            return False
        self._count("own_attachments_reasserted")
        joined = w.network in self._nets
        if not joined and w.leaving:
            reap_at = now + min(w.reap_in_ms / 1000.0, self.config.reap_network_interval)
            self._put_attachment(Attachment(self.name, w.network, w.ltime, True, w.floor, reap_at))
            self._left_floor[w.network] = max(self._left_floor.get(w.network, 0), w.ltime)
            return True
        ltime = self._clock.tick()
        if joined:
            floor = cur.floor if cur is not None else 0
            att = Attachment(self.name, w.network, ltime, False, floor)
        else:
            att = Attachment(
                self.name, w.network, ltime, True, w.floor, now + self.config.reap_network_interval
            )
            self._left_floor[w.network] = ltime
        self._put_attachment(att)
        self._broadcast_attachment(att, now)
        return False

    def _broadcast_attachment(self, att: Attachment, now: float) -> None:
        body = AttachmentEvents((attachment_to_wire(att, now),))
        self._broadcasts.append(codec.encode(Envelope(self.name, self._cluster_id, body)))

    # ------------------------------------------------------------------ internals: receive

    def _set_cluster_id(self, cluster_id: str) -> None:
        self._cluster_id = cluster_id
        self._events.append(ClusterIdSet(cluster_id))

    def _reject(self, src: Addr, reason: str) -> None:
        self._count("messages_rejected")
        self._events.append(MessageRejected(src, reason))

    def _dispatch(self, src: Addr, env: Envelope, now: float) -> None:
        sender = env.sender
        if sender == self.name:
            raise RemoteProtocolError(f"message from {src} claims our own name {sender!r}")
        if env.cluster_id and env.cluster_id != self._cluster_id:
            if self._cluster_id:
                self._count("refused_foreign_cluster")
                if (sender, env.cluster_id) not in self._refused:
                    self._refused.add((sender, env.cluster_id))
                    self._events.append(PeerRefused(sender, env.cluster_id))
                return
            self._set_cluster_id(env.cluster_id)
        if self._nodes.state(sender) is None or self._nodes.addr(sender) is None:
            self._nodes.learn_addr(sender, src)
        body = env.body
        if isinstance(body, TableEvents):
            self._on_table_events(body, now)
        elif isinstance(body, AttachmentEvents | PushPullState):
            for w in body.attachments:
                self._clock.witness(w.ltime)
            relay = isinstance(body, AttachmentEvents) and self.config.rebroadcast_attachments
            for w in body.attachments:
                if self._merge_attachment(w, now) and relay:
                    self._broadcasts.append(
                        codec.encode(Envelope(self.name, self._cluster_id, AttachmentEvents((w,))))
                    )
        elif isinstance(body, BulkSync):
            self._on_bulk_sync(sender, body, now)
        elif isinstance(body, StateSync):
            self._on_state_sync(sender, body, now)
        elif isinstance(body, Request):
            self._events.append(RequestReceived(sender, RequestId(body.request_id), body.payload))
        elif isinstance(body, Response):
            if self._pending_requests.get(body.request_id) == sender:
                del self._pending_requests[body.request_id]
                self._timers.cancel(("request_timeout", body.request_id))
                self._events.append(ResponseReceived(sender, RequestId(body.request_id), body.payload))
            else:
                self._count("late_responses")

    def _on_table_events(self, body: TableEvents, now: float) -> None:
        net = self._nets.get(body.network)
        for w in body.entries:
            self._clock.witness(w.ltime)
        if net is None:
            self._count("dropped_not_joined")
            return
        for w in body.entries:
            if self._merge_entry(body.network, w, now) and net.synced:
                e = self._store.get((body.network, w.table, w.key))
                if e is not None:
                    self._enqueue(e, now, is_local=False)

    def _on_bulk_sync(self, sender: str, body: BulkSync, now: float) -> None:
        for w in body.attachments:
            self._clock.witness(w.ltime)
        for _, entries in body.sections:
            for we in entries:
                self._clock.witness(we.ltime)
        for w in body.attachments:
            self._merge_attachment(w, now)
        limit = self.config.max_queue_len_broadcast_on_sync
        for network, entries in body.sections:
            net = self._nets.get(network)
            if net is None:
                self._count("dropped_not_joined")
                continue
            for we in entries:
                if self._merge_entry(network, we, now) and net.synced and len(net.queue) < limit:
                    e = self._store.get((network, we.table, we.key))
                    if e is not None:
                        self._enqueue(e, now, is_local=False)
        if body.part != body.parts - 1:
            return
        if body.mode is SyncMode.REQUEST:
            common = tuple(n for n in body.networks if n in self._nets)
            theirs = dict(body.digests)
            want = tuple(n for n in common if theirs.get(n) != self._store.digest(n))
            for network in common:
                if network not in want:
                    self._nets[network].ever_synced = True
            self._count("bulk_syncs_answered")
            if not want:
                self._count("bulk_syncs_identical")
            for payload in self._encode_bulk(body.sync_id, SyncMode.REPLY, common, now, want=want):
                self._send(sender, payload, True)
            return
        if body.mode is SyncMode.PUSH:
            for network in body.networks:
                if network in self._nets:
                    self._nets[network].ever_synced = True
            return
        pend = self._pending_syncs.get(body.sync_id)
        if pend is None or pend.peer != sender:
            self._count("late_sync_replies")
            return
        del self._pending_syncs[body.sync_id]
        self._timers.cancel(("sync_timeout", body.sync_id))
        self._count("bulk_syncs_completed")
        want = tuple(n for n in body.want if n in self._nets)
        if want:
            for payload in self._encode_bulk(body.sync_id, SyncMode.PUSH, want, now, want=want):
                self._send(sender, payload, True)
        self._sync_done(pend, True, now)

    def _on_state_sync(self, sender: str, body: StateSync, now: float) -> None:
        for w in body.attachments:
            self._clock.witness(w.ltime)
        for w in body.attachments:
            self._merge_attachment(w, now)
        if not body.is_reply and body.part == body.parts - 1:
            self._send_state_sync(sender, body.sync_id, True, now)

    # ------------------------------------------------------------------ internals: anti-entropy

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) % (2**63)
        return self._next_id

    def _encode_bulk(
        self,
        sync_id: int,
        mode: SyncMode,
        networks: tuple[str, ...],
        now: float,
        *,
        want: tuple[str, ...] = (),
    ) -> list[bytes]:
        """A bulk-sync message: a request carries attachments and digests, a reply attachments and the
        entries of ``want``, a push (``networks == want``) only the entries."""
        atts = []
        if mode is not SyncMode.PUSH:
            atts = [attachment_to_wire(a, now) for n in networks for a in self._atts.of_network(n)]
        digests = [(n, self._store.digest(n)) for n in networks] if mode is SyncMode.REQUEST else []
        sections = [(n, [to_wire(e, now) for e in self._store.entries(n)]) for n in want]
        return codec.encode_bulk_sync(
            self.name,
            self._cluster_id,
            sync_id=sync_id,
            mode=mode,
            networks=networks,
            attachments=atts,
            digests=digests,
            want=want,
            sections=sections,
            max_bytes=self.config.max_message_bytes,
        )

    def _start_sync(
        self, peer: str, networks: tuple[str, ...], purpose: str, now: float, attempt: int = 1
    ) -> None:
        sync_id = self._new_id()
        self._pending_syncs[sync_id] = PendingSync(sync_id, peer, networks, purpose, attempt)
        self._timers.set(("sync_timeout", sync_id), now + self.config.bulk_sync_timeout)
        self._count("bulk_syncs_started")
        for payload in self._encode_bulk(sync_id, SyncMode.REQUEST, networks, now):
            self._send(peer, payload, True)

    def _sync_in_flight(self, network: str) -> bool:
        return any(network in p.networks for p in self._pending_syncs.values())

    def _peer_appeared(self, network: str, node: str, now: float) -> None:
        """``node`` is (again) a peer of joined ``network``: rotate it in; bootstrap a first sync."""
        net = self._nets.get(network)
        if net is None or node == self.name or self._nodes.addr(node) is None:
            return
        att = self._atts.get(node, network)
        if att is None or att.leaving or not self._is_peer_state(node):
            return
        self._rotation.add(network, node)
        if not net.ever_synced and not self._sync_in_flight(network):
            self._start_sync(node, (network,), "bootstrap", now)
        self._arm_gossip(now)

    def _sync_done(self, pend: PendingSync, ok: bool, now: float) -> None:
        retry: list[str] = []
        for network in pend.networks:
            net = self._nets.get(network)
            if net is None:
                continue
            if ok:
                net.ever_synced = True
            if pend.purpose == "join" and pend.peer in net.join_pending:
                net.join_pending.discard(pend.peer)
                (net.join_answered if ok else net.join_failed).append(pend.peer)
                later, net.join_later = net.join_later, []
                for peer in later:
                    self._start_sync(peer, (network,), "join", now)
                if not net.join_pending:
                    net.synced = True
                    self._events.append(
                        NetworkSynced(
                            network, tuple(sorted(net.join_answered)), tuple(sorted(net.join_failed))
                        )
                    )
            if not ok and (
                (pend.purpose == "periodic" and pend.attempt < self.config.bulk_sync_attempts)
                or (pend.purpose == "bootstrap" and not net.ever_synced)
            ):
                retry.append(network)
        for network in retry:
            if self._sync_in_flight(network):
                continue
            peer = self._rotation.next(network, self._targets(network), self._rng, exclude=pend.peer)
            if peer is not None:
                self._start_sync(peer, (network,), pend.purpose, now, pend.attempt + 1)

    def _bulk_sync_round(self, now: float) -> None:
        choices: dict[str, list[str]] = {}
        for network in sorted(self._nets):
            peer = self._rotation.next(network, self._targets(network), self._rng)
            if peer is not None:
                choices.setdefault(peer, []).append(network)
        for peer in sorted(choices):
            self._start_sync(peer, tuple(choices[peer]), "periodic", now)

    def _send_state_sync(self, node: str, sync_id: int, is_reply: bool, now: float) -> None:
        payloads = codec.encode_state_sync(
            self.name,
            self._cluster_id,
            sync_id=sync_id,
            is_reply=is_reply,
            attachments=[attachment_to_wire(a, now) for a in self._atts.all()],
            max_bytes=self.config.max_message_bytes,
        )
        for payload in payloads:
            self._send(node, payload, True)

    def _start_state_sync(self, node: str, now: float) -> None:
        if self._nodes.addr(node) is None:
            return
        self._count("state_syncs_started")
        self._send_state_sync(node, self._new_id(), False, now)

    # ------------------------------------------------------------------ internals: gossip and timers

    def _send(self, node: str, payload: bytes, reliable: bool) -> None:
        addr = self._nodes.addr(node)
        if addr is None:
            self._count("unaddressable_sends")
            return
        self._count("messages_sent")
        self._messages.append(OutboundMessage(node, addr, payload, reliable))

    def _pick(self, peers: list[str], k: int) -> list[str]:
        """Up to ``k`` distinct random addressable peers, in O(k) when (as usual) all are addressable."""
        if len(peers) <= 4 * k:
            targets = [p for p in peers if self._nodes.addr(p) is not None]
            return self._rng.sample(targets, min(k, len(targets)))
        chosen: list[str] = []
        for p in self._rng.sample(peers, 4 * k):
            if self._nodes.addr(p) is not None:
                chosen.append(p)
                if len(chosen) == k:
                    break
        return chosen

    def _arm_gossip(self, now: float) -> None:
        if "gossip" in self._timers:
            return
        for network, net in self._nets.items():
            if net.queue and self._peer_list(network):
                self._timers.set("gossip", now + self.config.gossip_interval)
                return

    def _gossip(self, now: float) -> None:
        cfg = self.config
        for network in sorted(self._nets):
            net = self._nets[network]
            if not net.queue:
                continue
            peers = self._peer_list(network)
            chosen = self._pick(peers, cfg.gossip_nodes)
            if not chosen:
                continue
            limit = retransmit_limit(cfg.retransmit_mult, len(peers) + 1)
            relay_limit = retransmit_limit(cfg.relay_retransmit_mult, len(peers) + 1)
            budget = cfg.packet_budget_bytes - codec.table_events_overhead(
                self.name, self._cluster_id, network
            )
            # Adaptive budget: enough datagrams for one transmit of every queued item, within bounds.
            packets = min(cfg.max_gossip_packets, max(cfg.gossip_packets, -(-net.queue.nbytes // budget)))
            sent: set[Hashable] = set()
            for _ in range(packets):
                batch, large = net.queue.take(budget, limit, skip=sent, relay_limit=relay_limit)
                if batch:
                    payload = codec.encode_table_events_raw(
                        self.name, self._cluster_id, network, [i.raw for i in batch]
                    )
                    for peer in chosen:
                        self._send(peer, payload, False)
                for item in large:
                    payload = codec.encode_table_events_raw(self.name, self._cluster_id, network, [item.raw])
                    for peer in chosen:
                        self._send(peer, payload, True)
                if not batch and not large:
                    break
        self._arm_gossip(now)

    def _fire(self, key: Hashable, now: float) -> None:
        if key == "gossip":
            self._gossip(now)
        elif key == "bulk_sync":
            self._bulk_sync_round(now)
            self._timers.set("bulk_sync", now + self.config.bulk_sync_interval)
        elif key == "state_sync":
            alive = [n for n in self._nodes.names(NodeState.ALIVE) if self._nodes.addr(n) is not None]
            if alive:
                self._start_state_sync(self._rng.choice(alive), now)
            period = state_sync_period(self.config.state_sync_interval, len(alive) + 1)
            self._timers.set("state_sync", now + period)
        elif isinstance(key, tuple):
            kind = key[0]
            if kind == "reap_entry":
                e = self._store.get(key[1])
                if e is not None and e.deleted and e.reap_at is not None and e.reap_at <= now:
                    self._store.remove(key[1])
                    self._count("tombstones_reaped")
            elif kind == "reap_attachment":
                a = self._atts.get(key[1], key[2])
                if a is not None and a.leaving and a.reap_at is not None and a.reap_at <= now:
                    self._atts.remove(key[1], key[2])
                    self._peer_cache.pop(key[2], None)
                    self._count("attachments_reaped")
            elif kind == "forget":
                if self._nodes.state(key[1]) is NodeState.LEFT:
                    self._nodes.forget(key[1])
            elif kind == "sync_timeout":
                pend = self._pending_syncs.pop(key[1], None)
                if pend is not None:
                    self._count("bulk_syncs_failed")
                    self._sync_done(pend, False, now)
            elif kind == "request_timeout":
                node = self._pending_requests.pop(key[1], None)
                if node is not None:
                    self._events.append(RequestTimedOut(node, RequestId(key[1])))

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def _done(self) -> None:
        if self._clock.raised:
            self._clock.raised = False
            self._events.append(HighWaterRaised(self._clock.high_water))
