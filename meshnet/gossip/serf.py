"""Serf 0.9.4 compatibility (memberlist-wire.md section 10).

Theory of operation: real serf agents must see our nodes as ordinary serf members. That needs four
things, all pure value transformations here:

1. **Tags in node meta**: ``ff`` + msgpack ``map[string]string``; meta without ``ff`` is the serf
   protocol < 3 form, a plain role string (``decode_tags`` returns ``{"role": ...}``).
2. **Intents**, carried as memberlist user messages (``08 | serf type | msgpack``): the leave intent
   ``00 {LTime, Node, Prune}`` must reach serf *before* our ``dead(From=self)`` or serf shows us as
   ``failed`` instead of ``left``; the join intent ``01 {LTime, Node}`` is optional but keeps serf's
   status clock for us fresh. ``UserMsg.payload`` holds the bytes after ``08``.
3. **Push-pull user state** ``02 | {EventLTime, Events, LTime, LeftMembers, QueryLTime,
   StatusLTimes}``, so Lamport clocks sync during anti-entropy. We send an empty ``Events`` array and
   accept serf's 512 mostly-nil entries.
4. **Lamport clocks** (``SerfState``): the membership clock witnesses every intent and push-pull state;
   a leave intent is only applied by serf if its ``LTime`` is above the status time serf holds for
   that member, so ours is taken from a clock that has witnessed everything seen about us.

``SerfState`` mirrors serf's per-member status times and "leaving" marks just enough to re-gossip
intents once (as serf does) and to answer push-pulls; it never decides membership, ``Membership``
does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from meshnet.core.errors import DecodeError
from meshnet.gossip.codec import pack, unpack_one

__all__ = [
    "SerfMessageType",
    "TAGS_MAGIC",
    "MAX_META_BYTES",
    "encode_tags",
    "decode_tags",
    "LeaveIntent",
    "JoinIntent",
    "encode_leave_intent",
    "encode_join_intent",
    "decode_intent",
    "message_ltime",
    "SerfPushPull",
    "encode_push_pull_state",
    "decode_push_pull_state",
    "LamportClock",
    "SerfState",
]

TAGS_MAGIC = 0xFF
MAX_META_BYTES = 512


class SerfMessageType(IntEnum):
    """First byte of a serf message inside a memberlist user message. Append-only."""

    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


# --- tags ----------------------------------------------------------------------------------------


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """Serf node meta for ``tags``: ``ff`` + msgpack map (keys sorted, so the bytes are deterministic)."""
    return bytes((TAGS_MAGIC,)) + pack({k: tags[k] for k in sorted(tags)})


def decode_tags(meta: bytes | None) -> dict[str, str]:
    """Tags from serf node meta. Without the ``ff`` prefix the whole meta is a role string."""
    if not meta:
        return {}
    if meta[0] != TAGS_MAGIC:
        return {"role": meta.decode("utf-8", "replace")}
    value, end = unpack_one(meta, 1)
    if not isinstance(value, dict):
        raise DecodeError("serf tags: expected a map")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, (bytes, str)) or not isinstance(v, (bytes, str)):
            raise DecodeError("serf tags: keys and values must be strings")
        ks = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        out[ks] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return out


# --- intents -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaveIntent:
    ltime: int
    node: str
    prune: bool = False


@dataclass(frozen=True, slots=True)
class JoinIntent:
    ltime: int
    node: str


def encode_leave_intent(ltime: int, node: str, prune: bool = False) -> bytes:
    """``00 | {LTime, Node, Prune}`` (the user-message payload, without memberlist's ``08``)."""
    return bytes((SerfMessageType.LEAVE,)) + pack({"LTime": ltime, "Node": node, "Prune": prune})


def encode_join_intent(ltime: int, node: str) -> bytes:
    """``01 | {LTime, Node}`` (the user-message payload, without memberlist's ``08``)."""
    return bytes((SerfMessageType.JOIN,)) + pack({"LTime": ltime, "Node": node})


def _body(payload: bytes) -> dict[bytes, Any]:
    try:
        value = msgpack.unpackb(memoryview(payload)[1:], raw=True, strict_map_key=False)
    except msgpack.ExtraData as exc:  # trailing bytes after the struct: ignored, as Go's decoder does
        value = exc.unpacked
    except Exception as exc:  # msgpack raises several types for garbage
        raise DecodeError(f"serf message: bad msgpack: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError("serf message: expected a map")
    return value


def _uint(m: Mapping[bytes, Any], key: bytes) -> int:
    v = m.get(key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise DecodeError(f"serf {key.decode()}: expected an unsigned integer")
    return v


def _text(v: Any, what: str) -> str:
    if v is None:
        return ""
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"serf {what}: not UTF-8") from exc
    if isinstance(v, str):
        return v
    raise DecodeError(f"serf {what}: expected a string")


def decode_intent(payload: bytes) -> LeaveIntent | JoinIntent | None:
    """Decode a leave or join intent from a user-message payload; None for other serf messages."""
    if not payload or payload[0] not in (SerfMessageType.LEAVE, SerfMessageType.JOIN):
        return None
    m = _body(payload)
    ltime = _uint(m, b"LTime")
    node = _text(m.get(b"Node"), "Node")
    if payload[0] == SerfMessageType.LEAVE:
        prune = m.get(b"Prune")
        return LeaveIntent(ltime, node, bool(prune) if isinstance(prune, bool) else False)
    return JoinIntent(ltime, node)


def message_ltime(payload: bytes) -> tuple[int, int] | None:
    """(serf type, LTime) of an intent, user event or query payload; None for other payloads."""
    if not payload or payload[0] not in (
        SerfMessageType.LEAVE,
        SerfMessageType.JOIN,
        SerfMessageType.USER_EVENT,
        SerfMessageType.QUERY,
    ):
        return None
    return payload[0], _uint(_body(payload), b"LTime")


# --- push-pull user state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SerfPushPull:
    """Serf's ``messagePushPull`` (only what meshnet uses; ``Events`` is sent empty)."""

    ltime: int
    status_ltimes: Mapping[str, int] = field(default_factory=dict)
    left_members: tuple[str, ...] = ()
    event_ltime: int = 0
    query_ltime: int = 0


def encode_push_pull_state(pp: SerfPushPull) -> bytes:
    """``02 | msgpack messagePushPull`` with sorted keys (StatusLTimes sorted too, for determinism)."""
    body = {
        "EventLTime": pp.event_ltime,
        "Events": [],
        "LTime": pp.ltime,
        "LeftMembers": list(pp.left_members),
        "QueryLTime": pp.query_ltime,
        "StatusLTimes": {k: pp.status_ltimes[k] for k in sorted(pp.status_ltimes)},
    }
    return bytes((SerfMessageType.PUSH_PULL,)) + pack(body)


def decode_push_pull_state(data: bytes) -> SerfPushPull:
    """Decode serf's push-pull user state; ``Events`` (nil entries allowed) is checked, not kept."""
    if not data or data[0] != SerfMessageType.PUSH_PULL:
        raise DecodeError("serf push-pull state: bad type prefix")
    m = _body(data)
    events = m.get(b"Events")
    if events is not None and not isinstance(events, list):
        raise DecodeError("serf push-pull state: Events must be an array")
    left_raw = m.get(b"LeftMembers") or []
    if not isinstance(left_raw, list):
        raise DecodeError("serf push-pull state: LeftMembers must be an array")
    status_raw = m.get(b"StatusLTimes") or {}
    if not isinstance(status_raw, dict):
        raise DecodeError("serf push-pull state: StatusLTimes must be a map")
    status = _status_fast(status_raw)
    if status is None:  # something unusual: check entry by entry, for the exact error
        status = {}
        for k, v in status_raw.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DecodeError("serf push-pull state: StatusLTimes values must be unsigned")
            status[_text(k, "StatusLTimes key")] = v
    return SerfPushPull(
        ltime=_uint(m, b"LTime"),
        status_ltimes=status,
        left_members=tuple(_text(x, "LeftMembers") for x in left_raw),
        event_ltime=_uint(m, b"EventLTime"),
        query_ltime=_uint(m, b"QueryLTime"),
    )


def _status_fast(raw: dict) -> dict[str, int] | None:
    """``StatusLTimes`` as text -> time when every key is UTF-8 bytes and every value an unsigned
    int (a push-pull carries one entry per member, so this runs in comprehensions); else None."""
    if not all(type(v) is int and v >= 0 for v in raw.values()):
        return None
    if not all(type(k) is bytes for k in raw):
        return None
    try:
        return dict(zip([k.decode() for k in raw], raw.values(), strict=True))
    except UnicodeDecodeError:
        return None


# --- clocks and per-member status times -----------------------------------------------------------


class LamportClock:
    """Serf's LamportClock: ``time()``, ``increment()``, ``witness(v)`` (moves to v + 1 if v >= time)."""

    __slots__ = ("counter",)

    def __init__(self, start: int = 0) -> None:
        self.counter = start

    def time(self) -> int:
        return self.counter

    def increment(self) -> int:
        self.counter += 1
        return self.counter

    def witness(self, v: int) -> None:
        if v >= self.counter:
            self.counter = v + 1


class SerfState:
    """The serf-level view beside memberlist's: Lamport clocks, status times, leave intents seen.

    ``status_ltimes[name]`` is the newest intent time seen for ``name``; ``leaving`` holds names whose
    latest intent was a leave (insertion-ordered dict, so iteration is deterministic).
    """

    def __init__(self, local_name: str) -> None:
        self.local_name = local_name
        self.clock = LamportClock(1)
        self.event_clock = LamportClock(1)
        self.query_clock = LamportClock(1)
        self.status_ltimes: dict[str, int] = {}
        self.leaving: dict[str, None] = {}
        #: Bumped whenever ``status_ltimes`` or ``leaving`` change (cache invalidation).
        self.version = 0

    def fingerprint(self) -> tuple[int, int, int, int]:
        """Changes whenever ``local_state`` could encode differently for the same members."""
        return (self.version, self.clock.counter, self.event_clock.counter, self.query_clock.counter)

    def join_intent(self, intent: JoinIntent) -> bool:
        """Apply a join intent. True if it was news (serf re-gossips it then)."""
        self.clock.witness(intent.ltime)
        if intent.ltime <= self.status_ltimes.get(intent.node, -1):
            return False
        self.status_ltimes[intent.node] = intent.ltime
        self.leaving.pop(intent.node, None)
        self.version += 1
        return True

    def leave_intent(self, intent: LeaveIntent) -> bool:
        """Apply a leave intent. True if it was news. An intent about ourselves is not applied."""
        self.clock.witness(intent.ltime)
        if intent.ltime <= self.status_ltimes.get(intent.node, -1):
            return False
        if intent.node == self.local_name:
            return False
        self.status_ltimes[intent.node] = intent.ltime
        self.leaving[intent.node] = None
        self.version += 1
        return True

    def new_join_intent(self) -> bytes:
        """Our join intent at the current clock (and record it as our status time)."""
        ltime = self.clock.time()
        self.clock.witness(ltime)
        self.status_ltimes[self.local_name] = ltime
        self.version += 1
        return encode_join_intent(ltime, self.local_name)

    def new_leave_intent(self) -> bytes:
        """Our leave intent, with an LTime above every status time seen for us."""
        ltime = max(self.clock.time(), self.status_ltimes.get(self.local_name, 0) + 1)
        self.clock.witness(ltime)
        self.status_ltimes[self.local_name] = ltime
        self.version += 1
        return encode_leave_intent(ltime, self.local_name)

    def witness_message(self, payload: bytes) -> None:
        """Witness the LTime of a gossiped serf event or query (intents go through ``*_intent``)."""
        info = message_ltime(payload)
        if info is None:
            return
        kind, ltime = info
        if kind == SerfMessageType.USER_EVENT:
            self.event_clock.witness(ltime)
        elif kind == SerfMessageType.QUERY:
            self.query_clock.witness(ltime)

    def local_state(self, members: Iterable[str], left: Iterable[str]) -> bytes:
        """Our push-pull user state for the given member names and left member names."""
        status = {name: self.status_ltimes.get(name, 0) for name in members}
        return encode_push_pull_state(
            SerfPushPull(
                ltime=self.clock.time(),
                status_ltimes=status,
                left_members=tuple(left),
                event_ltime=self.event_clock.time(),
                query_ltime=self.query_clock.time(),
            )
        )

    def merge_remote_state(self, data: bytes) -> SerfPushPull:
        """Merge a peer's push-pull user state the way serf does. Raises ``DecodeError``."""
        pp = decode_push_pull_state(data)
        if pp.ltime > 0:
            self.clock.witness(pp.ltime - 1)
        if pp.event_ltime > 0:
            self.event_clock.witness(pp.event_ltime - 1)
        if pp.query_ltime > 0:
            self.query_clock.witness(pp.query_ltime - 1)
        left = set(pp.left_members)
        for name in pp.left_members:
            self.leave_intent(LeaveIntent(pp.status_ltimes.get(name, 0) + 1, name))
        # ``join_intent`` for every other entry, inlined (a push-pull carries every member):
        # witnessing commutes, so the clock witnesses the largest time once.
        remote = pp.status_ltimes
        if remote:
            self.clock.witness(max(remote.values()))
        status = self.status_ltimes
        leaving = self.leaving
        for name in sorted(remote):
            ltime = remote[name]
            if ltime <= status.get(name, -1) or name in left:
                continue
            status[name] = ltime
            leaving.pop(name, None)
            self.version += 1
        return pp

    def forget(self, name: str) -> None:
        """Drop a reaped member's status time."""
        self.status_ltimes.pop(name, None)
        self.leaving.pop(name, None)
        self.version += 1
