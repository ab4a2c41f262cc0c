"""The member table and memberlist's merge rules (memberlist-wire.md 8.5-8.7), table-driven.

Theory of operation
-------------------
House rules:

1. **All membership state changes happen here.** Alive, suspect and dead messages (gossiped,
   piggybacked, or replayed from a push-pull) go through ``alive()``, ``suspect()`` and ``dead()``.
   Each looks the case up in a rule table keyed by *(message kind, current state)*, with one action
   per incarnation comparison *(older, same, newer)*, then applies the action. The tables below are
   the whole policy; the code around them only handles the two checks that come first (protocol
   version sanity and the same-name-other-address conflict) and then carries the action out.
   ``alive`` decides its commonest case (a rumour arriving again) before the lookup, with the
   answer the table gives: a member in the list, same address and version vector, not newer.
2. **Rules about ourselves are a separate table.** Nobody else may declare us suspect or dead, or
   change our meta: we *refute* by raising our incarnation to ``max(own + 1, accused + 1)``,
   broadcasting ``alive`` and adding 1 to the Lifeguard health score. Once we have left, nothing
   about us is applied any more.
3. **Two lists, two lifetimes.** ``nodes`` is memberlist's node list: probe order (walked
   round-robin, reshuffled each round), random picks, and ``n`` for the suspicion and retransmit
   formulas. Dead and left members stay in it for ``gossip_to_the_dead_time`` and are dropped at the
   next reshuffle, after which memberlist treats their name as unknown. ``by_name`` is serf's member
   list: failed members stay until ``reconnect_timeout``, left ones until ``tombstone_timeout``
   (``MemberReaped``). A member that is in ``by_name`` but no longer in ``nodes`` is "unknown" to
   the merge rules, exactly as it would be to memberlist.
4. **Effects are values or deadlines, never callbacks.** Broadcasts go to the ``BroadcastQueue``
   keyed by node name (news about X replaces older news about X), events are appended to the
   facade's event deque, suspicion deadlines and reap deadlines go into the shared ``DeadlineHeap``
   under ``("suspect", name)`` and ``("reap", name)``.

States: alive -> suspect (failed probe or gossip) -> dead (suspicion expired or gossip), or
left (``dead`` with ``From == Node``). An ``alive`` with a higher incarnation brings any state back.
The conflict rule: an ``alive`` for a known name at another address is rejected with a
``NameConflict`` event, unless the old entry has left, or has been dead longer than
``dead_node_reclaim_time`` (> 0).
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from enum import Enum

from meshnet.core.clock import DeadlineHeap
from meshnet.core.errors import DecodeError
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.broadcast_queue import BroadcastQueue
from meshnet.gossip.codec import encode_message, encode_push_state
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import (
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    NameConflict,
)
from meshnet.gossip.messages import Alive, Dead, NodeStateType, PushNodeState, Suspect
from meshnet.gossip.suspicion import Suspicion, make_suspicion
from meshnet.gossip.util import k_random_nodes

__all__ = ["Action", "Cmp", "NodeState", "Membership", "REMOTE_RULES", "SELF_RULES", "STATE_NAMES"]

ALIVE, SUSPECT, DEAD, LEFT = (
    NodeStateType.ALIVE,
    NodeStateType.SUSPECT,
    NodeStateType.DEAD,
    NodeStateType.LEFT,
)
STATE_NAMES = {ALIVE: "alive", SUSPECT: "suspect", DEAD: "dead", LEFT: "left"}


class Action(Enum):
    """What a message does to the table."""

    IGNORE = "ignore"
    ADD = "add"  # unknown name: add as alive
    UPDATE = "update"  # newer alive for an alive/suspect member
    REVIVE = "revive"  # newer alive for a dead/left member (or reclaiming a left/dead name)
    CONFLICT = "conflict"  # same name, other address
    SUSPECT = "suspect"  # alive -> suspect, start the suspicion
    CONFIRM = "confirm"  # another accuser for a suspect member
    FAIL = "fail"  # -> dead, or left when From == Node
    REFUTE = "refute"  # about us: bump incarnation, broadcast alive
    REFUTE_IF_CHANGED = "refute-if-changed"  # alive about us, same incarnation: refute if meta/vsn differ
    LEAVE = "leave"  # our own graceful leave


class Cmp(Enum):
    """The message's incarnation compared with the known one."""

    OLDER = 0
    SAME = 1
    NEWER = 2


_I, _A, _U, _R = Action.IGNORE, Action.ADD, Action.UPDATE, Action.REVIVE
_S, _C, _F = Action.SUSPECT, Action.CONFIRM, Action.FAIL

#: Rules about other members: (kind, known state or None) -> actions for (older, same, newer).
REMOTE_RULES: dict[tuple[str, NodeStateType | None], tuple[Action, Action, Action]] = {
    ("alive", None): (_A, _A, _A),
    ("alive", ALIVE): (_I, _I, _U),
    ("alive", SUSPECT): (_I, _I, _U),
    ("alive", DEAD): (_I, _I, _R),
    ("alive", LEFT): (_I, _I, _R),
    ("suspect", None): (_I, _I, _I),
    ("suspect", ALIVE): (_I, _S, _S),
    ("suspect", SUSPECT): (_I, _C, _C),
    ("suspect", DEAD): (_I, _I, _I),
    ("suspect", LEFT): (_I, _I, _I),
    ("dead", None): (_I, _I, _I),
    ("dead", ALIVE): (_I, _F, _F),
    ("dead", SUSPECT): (_I, _F, _F),
    ("dead", DEAD): (_I, _I, _I),
    ("dead", LEFT): (_I, _I, _I),
}

#: Rules about ourselves: (kind, our state) -> actions for (older, same, newer).
SELF_RULES: dict[tuple[str, NodeStateType], tuple[Action, Action, Action]] = {
    ("alive", ALIVE): (_I, Action.REFUTE_IF_CHANGED, Action.REFUTE),
    ("suspect", ALIVE): (_I, Action.REFUTE, Action.REFUTE),
    ("dead", ALIVE): (_I, Action.REFUTE, Action.REFUTE),
    ("alive", LEFT): (_I, _I, _I),
    ("suspect", LEFT): (_I, _I, _I),
    ("dead", LEFT): (_I, _I, _I),
}


def _cmp(msg_inc: int, known: int) -> int:
    """Index into a rule's action tuple: 0 older, 1 same, 2 newer (``Cmp(...).value``)."""
    return 0 if msg_inc < known else (1 if msg_inc == known else 2)


def ip_text(raw: bytes) -> str:
    """The textual form of a 4- or 16-byte wire address; ``DecodeError`` for other lengths."""
    text = _IP_TEXT.get(raw)
    if text is None:
        if len(raw) not in (4, 16):
            raise DecodeError(f"an IP address is 4 or 16 bytes, got {len(raw)}")
        text = str(ipaddress.ip_address(raw))
        if len(_IP_TEXT) >= 65536:
            _IP_TEXT.clear()
        _IP_TEXT[bytes(raw)] = text
    return text


#: ``ip_text`` results (pure; ``ipaddress`` is slow and the same few addresses recur).
_IP_TEXT: dict[bytes, str] = {}


def _alive_of(r: PushNodeState) -> tuple[Alive, bytes]:
    """The ``alive`` a push-pull node state stands for, and its encoding (memoized per state
    object: decoded states are shared, see ``codec.decode_push_pull``)."""
    hit = _ALIVE_OF.get(id(r))
    if hit is not None and hit[0] is r:
        return hit[1], hit[2]
    msg = Alive(incarnation=r.incarnation, node=r.name, addr=r.addr, port=r.port, meta=r.meta, vsn=r.vsn)
    raw = encode_message(msg)
    if len(_ALIVE_OF) >= 16384:
        del _ALIVE_OF[next(iter(_ALIVE_OF))]
    _ALIVE_OF[id(r)] = (r, msg, raw)  # holding r keeps its id from being reused
    return msg, raw


_ALIVE_OF: dict[int, tuple[PushNodeState, Alive, bytes]] = {}
#: Encoded push-pull rows by content (``NodeState.push_raw``).
_PUSH_RAW: dict[tuple, bytes] = {}


class NodeState:
    """One member as this node knows it (mutable; snapshots are ``Member``)."""

    __slots__ = (
        "name",
        "addr",
        "port",
        "meta",
        "incarnation",
        "state",
        "state_changed_at",
        "vsn",
        "pmax",
        "addr_str",
        "in_list",
        "epoch",
        "_member",
        "_push_raw",
    )

    def __init__(
        self, name: str, addr: bytes, port: int, meta: bytes, incarnation: int, vsn: bytes, now: float
    ):
        self.name = name
        self.addr = addr
        self.port = port
        self.meta = meta
        self.incarnation = incarnation
        self.state = ALIVE
        self.state_changed_at = now
        self.vsn = vsn
        self.pmax = vsn[1] if len(vsn) >= 6 else 0
        self.addr_str = ip_text(addr)
        self.in_list = False
        #: Shared with the owning ``Membership``: bumped on every change (cache invalidation).
        self.epoch = [0]
        self._member: Member | None = None
        self._push_raw: bytes | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(ip text, port) to send to."""
        return (self.addr_str, self.port)

    def touch(self) -> None:
        """Forget cached snapshots after a change (and bump the table's epoch)."""
        self._member = None
        self._push_raw = None
        self.epoch[0] += 1

    def set_address(self, addr: bytes, port: int) -> None:
        if addr != self.addr:
            self.addr = addr
            self.addr_str = ip_text(addr)
        self.port = port

    def set_vsn(self, vsn: bytes) -> None:
        if len(vsn) >= 6:
            self.vsn = vsn
            self.pmax = vsn[1]

    def member(self) -> Member:
        """An immutable snapshot (cached until the next change; see ``snapshot``)."""
        m = self._member
        if m is None:
            m = self._member = self.snapshot()
        return m

    def snapshot(self) -> Member:
        """An immutable snapshot, not kept (events: a big table should not hold one per member)."""
        m = self._member
        if m is not None:
            return m
        return Member(
            name=self.name,
            addr=self.addr_str,
            port=self.port,
            meta=self.meta,
            incarnation=self.incarnation,
            state=STATE_NAMES[self.state],
            vsn=self.vsn,
            state_changed_at=self.state_changed_at,
        )

    def push_state(self) -> PushNodeState:
        """This member as a push-pull node state."""
        return PushNodeState(
            name=self.name,
            addr=self.addr,
            port=self.port,
            meta=self.meta,
            incarnation=self.incarnation,
            state=int(self.state),
            vsn=self.vsn,
        )

    def push_raw(self) -> bytes:
        """``push_state`` encoded (cached until the next change, and shared between tables: every
        member's row is the same in every table that agrees about it)."""
        raw = self._push_raw
        if raw is None:
            key = (self.name, self.addr, self.port, self.meta, self.incarnation, int(self.state), self.vsn)
            raw = _PUSH_RAW.get(key)
            if raw is None:
                raw = encode_push_state(self.push_state())
                if len(_PUSH_RAW) >= 16384:
                    del _PUSH_RAW[next(iter(_PUSH_RAW))]
                _PUSH_RAW[key] = raw
            self._push_raw = raw
        return raw

    def alive_message(self) -> Alive:
        return Alive(
            incarnation=self.incarnation,
            node=self.name,
            addr=self.addr,
            port=self.port,
            meta=self.meta,
            vsn=self.vsn,
        )


class Membership:
    """The member table. See the module docstring for the rules."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        local: NodeState,
        rng: random.Random,
        queue: BroadcastQueue,
        awareness: Awareness,
        heap: DeadlineHeap,
        events: deque,
        stats: Counter,
        now: float,
    ) -> None:
        self.config = config
        self.local = local
        self.local_name = local.name
        self.rng = rng
        self.queue = queue
        self.awareness = awareness
        self.heap = heap
        self.events = events
        self.stats = stats
        self.by_name: dict[str, NodeState] = {}
        #: Member by (ip text, port), for "is this sender a member?" (the latest member at an address).
        self.by_addr: dict[tuple[str, int], NodeState] = {}
        self.nodes: list[NodeState] = []
        #: Bumped on every change to any member or to the node list: push-pull encodings are cached on it.
        self.epoch = local.epoch
        self.probe_index = 0
        self.suspicions: dict[str, Suspicion] = {}
        #: Failed (dead, not left) member names, insertion-ordered for deterministic picks.
        self.failed: dict[str, None] = {}
        #: Set when a member was declared dead or left: the facade gossips that at once.
        self.urgent = False
        #: Called with the local node after every refutation (the facade re-encodes its alive).
        self.on_refute: Callable[[], None] | None = None
        self._bootstrap(now)

    # -- reads ------------------------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        """memberlist's estimated node count: the node list, dead and left members included."""
        return len(self.nodes)

    def get(self, name: str) -> NodeState | None:
        """The member as memberlist knows it (None if unknown or already dropped from the list)."""
        node = self.by_name.get(name)
        return node if node is not None and node.in_list else None

    def members(self) -> list[Member]:
        """Snapshots of every member (serf's view: failed and left until reaped), sorted by name."""
        return [self.by_name[n].member() for n in sorted(self.by_name)]

    def alive_at(self, addr: tuple[str, int]) -> bool:
        """Is the member at this (ip text, port) address in the node list and alive or suspect?"""
        node = self.by_addr.get(addr)
        return node is not None and node.in_list and node.state <= SUSPECT

    def in_list_at(self, addr: tuple[str, int]) -> bool:
        """Is a member at this (ip text, port) address in the node list, in any state?"""
        node = self.by_addr.get(addr)
        return node is not None and node.in_list

    def known_at(self, addr: tuple[str, int]) -> bool:
        """Is the member at this address in the node list and not believed dead (alive, suspect or left)?"""
        node = self.by_addr.get(addr)
        return node is not None and node.in_list and node.state != DEAD

    def random_nodes(self, k: int, exclude: Callable[[NodeState], bool]) -> list[NodeState]:
        """Up to k random members of the node list not excluded."""
        return k_random_nodes(k, self.nodes, exclude, self.rng)

    def any_alive_other(self) -> bool:
        """Is any other member alive or suspect?"""
        return any(n.state <= SUSPECT and n is not self.local for n in self.nodes)

    def push_states(self) -> list[PushNodeState]:
        """Our node list as push-pull node states."""
        return [n.push_state() for n in self.nodes]

    def push_states_raw(self) -> list[bytes]:
        """``push_states``, each encoded (``codec.encode_push_state``)."""
        return [n.push_raw() for n in self.nodes]

    # -- probe order --------------------------------------------------------------------------------

    def next_probe_target(self, now: float) -> NodeState | None:
        """The next member to probe, round-robin over a list reshuffled each round; None if none."""
        checked = 0
        while True:
            if checked >= len(self.nodes):
                return None
            if self.probe_index >= len(self.nodes):
                self.reset_nodes(now)
                self.probe_index = 0
                checked += 1
                continue
            node = self.nodes[self.probe_index]
            self.probe_index += 1
            if node is self.local or node.state >= DEAD:
                checked += 1
                continue
            return node

    def reset_nodes(self, now: float) -> None:
        """Drop members dead or left longer than gossip_to_the_dead_time from the list; reshuffle it."""
        gttd = self.config.gossip_to_the_dead_time
        kept: list[NodeState] = []
        for n in self.nodes:
            if n.state >= DEAD and now - n.state_changed_at > gttd and n is not self.local:
                n.in_list = False
            else:
                kept.append(n)
        if len(kept) != len(self.nodes):
            self.epoch[0] += 1
        self.rng.shuffle(kept)
        self.nodes = kept

    # -- the three message handlers -----------------------------------------------------------------

    def alive(self, msg: Alive, *, now: float, raw: bytes | None = None) -> Action:
        """Apply an ``alive`` (gossiped or from a push-pull). ``raw``: its canonical encoding, if known."""
        node = self.by_name.get(msg.node)
        if (
            node is not None
            and msg.incarnation <= node.incarnation
            and node.in_list
            and msg.vsn == node.vsn
            and msg.addr == node.addr
            and msg.port == node.port
            and node is not self.local
        ):
            # The common case, decided as below would: a version vector and an address equal to
            # ones already accepted are valid, and REMOTE_RULES ignore an alive that is not newer.
            return Action.IGNORE
        vsn = msg.vsn
        if len(vsn) >= 3 and (vsn[0] == 0 or vsn[1] == 0 or vsn[0] > vsn[1]):
            self.stats["alive_bad_version"] += 1
            return Action.IGNORE
        if len(msg.addr) not in (4, 16):
            self.stats["alive_bad_addr"] += 1
            return Action.IGNORE
        if node is not None and not node.in_list:
            node = None  # memberlist forgot it: a new node again
        if node is self.local:
            if node.addr != msg.addr or node.port != msg.port:
                return self._conflict(node, msg)
            action = SELF_RULES[("alive", node.state)][_cmp(msg.incarnation, node.incarnation)]
            if action is Action.REFUTE_IF_CHANGED:
                if (msg.meta or b"") == node.meta and msg.vsn == node.vsn:
                    return Action.IGNORE
                action = Action.REFUTE
            if action is Action.REFUTE:
                self.refute(msg.incarnation)
            return action
        if node is None:
            return self._add(msg, now, raw)
        if node.addr != msg.addr or node.port != msg.port:
            reclaim = self.config.dead_node_reclaim_time
            can_reclaim = reclaim > 0 and now - node.state_changed_at > reclaim
            if node.state == LEFT or (node.state == DEAD and can_reclaim):
                self._revive(node, msg, now, raw)
                return Action.REVIVE
            return self._conflict(node, msg)
        action = REMOTE_RULES[("alive", node.state)][_cmp(msg.incarnation, node.incarnation)]
        if action is Action.UPDATE or action is Action.REVIVE:
            self._revive(node, msg, now, raw)
        return action

    def suspect(self, msg: Suspect, *, now: float, raw: bytes | None = None) -> Action:
        """Apply a ``suspect`` (gossiped, from a push-pull, or our own failed probe)."""
        node = self.get(msg.node)
        if node is self.local:
            action = SELF_RULES[("suspect", node.state)][_cmp(msg.incarnation, node.incarnation)]
            if action is Action.REFUTE:
                self.refute(msg.incarnation)
            return action
        state = node.state if node is not None else None
        action = REMOTE_RULES[("suspect", state)][
            _cmp(msg.incarnation, node.incarnation) if node is not None else 0
        ]
        if action is Action.CONFIRM:
            assert node is not None
            s = self.suspicions.get(node.name)
            if s is None or not s.confirm(msg.from_node, now=now):
                return Action.IGNORE
            self.stats["suspect_confirmations"] += 1
            self._broadcast(node.name, msg, raw)
            if s.deadline <= now:
                self.suspicion_expired(node.name, now=now)
            else:
                self.heap.set(("suspect", node.name), s.deadline)
        elif action is Action.SUSPECT:
            assert node is not None
            self._broadcast(node.name, msg, raw)
            node.incarnation = msg.incarnation
            node.state = SUSPECT
            node.state_changed_at = now
            node.touch()
            s = make_suspicion(
                msg.from_node,
                suspicion_mult=self.config.suspicion_mult,
                max_timeout_mult=self.config.suspicion_max_timeout_mult,
                n=self.num_nodes,
                probe_interval=self.config.probe_interval,
                now=now,
            )
            self.suspicions[node.name] = s
            self.heap.set(("suspect", node.name), s.deadline)
            self.stats["suspects"] += 1
            self.events.append(MemberSuspected(node.snapshot(), msg.from_node))
        return action

    def dead(self, msg: Dead, *, now: float, raw: bytes | None = None) -> Action:
        """Apply a ``dead`` (gossiped, a push-pull ``left``, or an expired suspicion)."""
        node = self.get(msg.node)
        if node is self.local:
            action = SELF_RULES[("dead", node.state)][_cmp(msg.incarnation, node.incarnation)]
            if action is Action.REFUTE:
                self.refute(msg.incarnation)
            return action
        if node is None:
            return Action.IGNORE
        action = REMOTE_RULES[("dead", node.state)][_cmp(msg.incarnation, node.incarnation)]
        if msg.incarnation >= node.incarnation:
            self._cancel_suspicion(node.name)
        if action is Action.FAIL:
            self._broadcast(node.name, msg, raw)
            self.urgent = True
            self._kill(
                node, msg.incarnation, left=msg.from_node == msg.node, from_node=msg.from_node, now=now
            )
        return action

    def suspicion_expired(self, name: str, *, now: float) -> None:
        """The suspicion deadline for ``name`` passed: declare it dead (From = us)."""
        s = self.suspicions.pop(name, None)
        self.heap.cancel(("suspect", name))
        node = self.get(name)
        if s is None or node is None or node.state != SUSPECT:
            return
        self.stats["suspicion_timeouts"] += 1
        self.dead(Dead(incarnation=node.incarnation, node=name, from_node=self.local_name), now=now)

    def merge_state(self, states: Iterable[PushNodeState], *, now: float) -> None:
        """Merge a peer's push-pull node states (alive -> alive, left -> dead From=it, else suspect From=us)."""
        by_name = self.by_name
        for r in states:
            if r.state == ALIVE:
                # Fast path for the common case (nothing new): the table says IGNORE for an alive
                # that is not newer about a known member at the same address.
                node = by_name.get(r.name)
                if (
                    node is not None
                    and node.in_list
                    and node is not self.local
                    and r.incarnation <= node.incarnation
                    and r.addr == node.addr
                    and r.port == node.port
                ):
                    continue
                msg, raw = _alive_of(r)
                self.alive(msg, now=now, raw=raw)
            elif r.state == LEFT:
                self.dead(Dead(incarnation=r.incarnation, node=r.name, from_node=r.name), now=now)
            elif r.state in (DEAD, SUSPECT):
                self.suspect(
                    Suspect(incarnation=r.incarnation, node=r.name, from_node=self.local_name), now=now
                )

    def verify_protocol(self, remote: Sequence[PushNodeState]) -> str | None:
        """memberlist's verifyProtocol over alive nodes on both sides; an error text or None."""
        # Members share a handful of version vectors: check each distinct one once, and only
        # when something is wrong walk the states in order to name the first offender.
        remote_alive = {r.vsn for r in remote if r.state == ALIVE and r.vsn}
        if any(len(v) < 6 for v in remote_alive):
            return self._verify_protocol_in_order(remote)
        ranges = remote_alive | {n.vsn for n in self.nodes if n.state == ALIVE and len(n.vsn) >= 6}
        maxpmin = max((v[0] for v in ranges), default=0)
        minpmax = min((v[1] for v in ranges), default=255)
        maxdmin = max((v[3] for v in ranges), default=0)
        mindmax = min((v[4] for v in ranges), default=255)
        for v in {r.vsn for r in remote} | {n.vsn for n in self.nodes}:
            pcur, dcur = (v[2], v[5]) if len(v) >= 6 else (0, 0)
            if not (maxpmin <= pcur <= minpmax and maxdmin <= dcur <= mindmax):
                return self._verify_protocol_in_order(remote)
        return None

    def _verify_protocol_in_order(self, remote: Sequence[PushNodeState]) -> str | None:
        maxpmin = maxdmin = 0
        minpmax = mindmax = 255
        for r in remote:
            if r.state != ALIVE or not r.vsn:
                continue
            if len(r.vsn) < 6:
                return f"Node '{r.name}' sent a short version vector ({len(r.vsn)} bytes)"
            v = r.vsn
            maxpmin, minpmax = max(maxpmin, v[0]), min(minpmax, v[1])
            maxdmin, mindmax = max(maxdmin, v[3]), min(mindmax, v[4])
        for n in self.nodes:
            if n.state != ALIVE or len(n.vsn) < 6:
                continue
            v = n.vsn
            maxpmin, minpmax = max(maxpmin, v[0]), min(minpmax, v[1])
            maxdmin, mindmax = max(maxdmin, v[3]), min(mindmax, v[4])
        checks = [(r.name, r.vsn) for r in remote] + [(n.name, n.vsn) for n in self.nodes]
        for name, v in checks:
            pcur, dcur = (v[2], v[5]) if len(v) >= 6 else (0, 0)
            if not maxpmin <= pcur <= minpmax:
                return f"Node '{name}' protocol version ({pcur}) is incompatible: [{maxpmin}, {minpmax}]"
            if not maxdmin <= dcur <= mindmax:
                return f"Node '{name}' delegate protocol version ({dcur}) is incompatible: [{maxdmin}, {mindmax}]"
        return None

    # -- our own node -----------------------------------------------------------------------------

    def refute(self, accused: int) -> None:
        """Beat an accusation about us: incarnation max(own+1, accused+1), health +1, broadcast alive."""
        me = self.local
        me.incarnation = max(me.incarnation + 1, accused + 1)
        me.touch()
        self.awareness.apply_delta(1)
        self.stats["refutes"] += 1
        self._broadcast(me.name, me.alive_message())
        if self.on_refute is not None:
            self.on_refute()

    def set_local_meta(self, meta: bytes, *, now: float) -> None:
        """New meta: next incarnation, alive broadcast, ``MemberUpdated`` for ourselves."""
        me = self.local
        me.incarnation += 1
        me.meta = meta
        me.touch()
        self._broadcast(me.name, me.alive_message())
        self.events.append(MemberUpdated(me.snapshot()))

    def leave_local(self, *, now: float):
        """Our graceful leave: mark ourselves left and queue ``dead{own inc, self, From: self}``."""
        me = self.local
        msg = Dead(incarnation=me.incarnation, node=me.name, from_node=me.name)
        b = self.queue.queue(encode_message(msg), key=me.name)
        me.state = LEFT
        me.state_changed_at = now
        me.touch()
        self.events.append(MemberLeft(me.snapshot()))
        return b

    # -- reaping ----------------------------------------------------------------------------------

    def reap(self, name: str) -> bool:
        """Forget a dead or left member for good (serf reap). True if it was removed."""
        node = self.by_name.get(name)
        if node is None or node.state < DEAD or node is self.local:
            return False
        del self.by_name[name]
        if self.by_addr.get(node.address) is node:
            del self.by_addr[node.address]
        self.epoch[0] += 1
        self.failed.pop(name, None)
        if node.in_list:
            i = self.nodes.index(node)
            del self.nodes[i]
            self.epoch[0] += 1
            if i < self.probe_index:
                self.probe_index -= 1
            node.in_list = False
        self.events.append(MemberReaped(name))
        return True

    # -- internals --------------------------------------------------------------------------------

    def _bootstrap(self, now: float) -> None:
        me = self.local
        me.in_list = True
        self.by_name[me.name] = me
        self.by_addr[me.address] = me
        self.nodes.append(me)
        self._broadcast(me.name, me.alive_message())
        self.events.append(MemberJoined(me.snapshot()))

    def _broadcast(self, key: str, msg: Alive | Suspect | Dead, raw: bytes | None = None) -> None:
        self.queue.queue(raw if raw is not None else encode_message(msg), key=key)

    def _move(self, node: NodeState, addr: bytes, port: int) -> None:
        """``node.set_address`` keeping ``by_addr`` in step."""
        old = node.address
        node.set_address(addr, port)
        if self.by_addr.get(old) is node:
            del self.by_addr[old]
        self.by_addr[node.address] = node

    def _conflict(self, node: NodeState, msg: Alive) -> Action:
        self.stats["name_conflicts"] += 1
        self.events.append(NameConflict(node.snapshot(), ip_text(msg.addr), msg.port))
        return Action.CONFLICT

    def _add(self, msg: Alive, now: float, raw: bytes | None = None) -> Action:
        node = self.by_name.get(msg.node)
        if node is None:
            node = NodeState(msg.node, msg.addr, msg.port, msg.meta or b"", msg.incarnation, msg.vsn, now)
            node.epoch = self.epoch
            self.by_name[msg.node] = node
            self.by_addr[node.address] = node
        else:  # dropped from memberlist's list but still listed by serf: memberlist sees a new node
            self._move(node, msg.addr, msg.port)
            node.meta = msg.meta or b""
            node.incarnation = msg.incarnation
            node.set_vsn(msg.vsn)
            node.state = ALIVE
            node.state_changed_at = now
            node.touch()
            self.failed.pop(node.name, None)
            self.heap.cancel(("reap", node.name))
        node.in_list = True
        self.epoch[0] += 1
        # Insert at a random offset (the swap memberlist does) so failure detection stays fair.
        n = len(self.nodes)
        offset = self.rng.randrange(n + 1) if n else 0
        self.nodes.append(node)
        self.nodes[offset], self.nodes[n] = self.nodes[n], self.nodes[offset]
        self._broadcast(node.name, msg, raw)
        self.events.append(MemberJoined(node.snapshot()))
        return Action.ADD

    def _revive(self, node: NodeState, msg: Alive, now: float, raw: bytes | None = None) -> None:
        self._cancel_suspicion(node.name)
        self._broadcast(node.name, msg, raw)
        old_state, old_meta, old_addr = node.state, node.meta, (node.addr, node.port)
        node.set_vsn(msg.vsn)
        node.incarnation = msg.incarnation
        node.meta = msg.meta or b""
        self._move(node, msg.addr, msg.port)
        if node.state != ALIVE:
            node.state = ALIVE
            node.state_changed_at = now
        node.touch()
        if old_state >= DEAD:
            self.failed.pop(node.name, None)
            self.heap.cancel(("reap", node.name))
            self.events.append(MemberJoined(node.snapshot()))
        elif old_meta != node.meta or old_addr != (node.addr, node.port) or old_state == SUSPECT:
            self.events.append(MemberUpdated(node.snapshot()))

    def _kill(self, node: NodeState, incarnation: int, *, left: bool, from_node: str, now: float) -> None:
        node.incarnation = incarnation
        node.state = LEFT if left else DEAD
        node.state_changed_at = now
        node.touch()
        if left:
            self.failed.pop(node.name, None)
            self.heap.set(("reap", node.name), now + self.config.tombstone_timeout)
            self.events.append(MemberLeft(node.snapshot()))
        else:
            self.failed[node.name] = None
            self.heap.set(("reap", node.name), now + self.config.reconnect_timeout)
            self.events.append(MemberFailed(node.snapshot(), from_node))

    def _cancel_suspicion(self, name: str) -> None:
        if self.suspicions.pop(name, None) is not None:
            self.heap.cancel(("suspect", name))
