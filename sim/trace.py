"""Simulation traces: (t, node, event) records, a bounded tail, optional JSONL, and a running hash.

Theory of operation. Every observable thing the simulated world does is recorded here in the order
the scheduler processes it: core events (``MemberJoined`` ...) and simulator actions (``crash``,
``partition`` ...) as records, and every datagram and stream hop as a packet digest when it is
delivered (so latency, loss and duplication all show in the hash). Each record is a
tuple ``(t_us, node, event, *values)`` of primitives (str/int/bytes/bool/None); its ``repr`` feeds a
running BLAKE2b hash, so the hash of a whole run is the determinism oracle: same seed, same hash, and
any divergence (a set iterated in hash order, a stray real clock) changes it. Packets are hashed as
``(t_us, src, dst, len)`` plus their bytes without being kept.

Only the last ``keep`` records are held in memory (for failure notes); ``jsonl_path`` writes all of
them as JSON lines ``{"t": seconds, "node": ..., "event": ..., <field>: ...}``. Field names per event
come from ``FIELDS`` (unknown events get ``v0, v1, ...``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import deque
from typing import IO, Any

__all__ = ["Trace", "FIELDS", "describe_event"]

_PKT = struct.Struct("<qiiI")

#: Field names of the values of each record kind (core events and simulator actions).
FIELDS: dict[str, tuple[str, ...]] = {
    "MemberJoined": ("member", "incarnation", "state"),
    "MemberUpdated": ("member", "incarnation", "state"),
    "MemberSuspected": ("member", "incarnation", "state", "from_node"),
    "MemberFailed": ("member", "incarnation", "state", "from_node"),
    "MemberLeft": ("member", "incarnation", "state"),
    "MemberReaped": ("member",),
    "UserMessageReceived": ("src", "payload"),
    "MessageRejected": ("src", "reason"),
    "NameConflict": ("member", "other_addr", "other_port"),
    "JoinCompleted": ("seed", "members"),
    "JoinFailed": ("seed", "reason"),
    "LeaveCompleted": ("drained",),
    "start": ("addr", "seeds"),
    "crash": (),
    "restart": ("addr", "seeds"),
    "leave": (),
    "stopped": ("reason",),
    "partition": ("groups",),
    "block_one_way": ("src", "dst"),
    "heal": (),
    "loss": ("loss",),
    "send_user": ("size",),
    "violation": ("what",),
    "frame_mismatch": ("stream_id", "claimed", "actual"),
}

_SUMMARY_CACHE: dict[type, tuple[str, tuple[str, ...]]] = {}


def _prim(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, bytes | bytearray):
        return bytes(v[:32]).hex() + (f"+{len(v) - 32}" if len(v) > 32 else "")
    if isinstance(v, tuple):
        return ":".join(str(x) for x in v)
    return repr(v)


def describe_event(ev: Any) -> tuple[Any, ...]:
    """Flatten a core event into ``(event_name, *primitive values)`` for a trace record.

    Events carrying a ``member`` are summarised as (name, incarnation, state, [from_node]); others
    list their dataclass fields in order, with bytes shortened to a hex prefix.
    """
    cls = type(ev)
    info = _SUMMARY_CACHE.get(cls)
    if info is None:
        names = tuple(getattr(cls, "__dataclass_fields__", {}) or getattr(cls, "__slots__", ()))
        info = (cls.__name__, names)
        _SUMMARY_CACHE[cls] = info
    name, names = info
    m = getattr(ev, "member", None)
    if m is not None and hasattr(m, "incarnation"):
        if name in ("MemberSuspected", "MemberFailed"):
            return (name, m.name, m.incarnation, m.state, getattr(ev, "from_node", None))
        return (name, m.name, m.incarnation, m.state)
    if name == "NameConflict":
        return (name, ev.existing.name, ev.other_addr, ev.other_port)
    return (name, *(_prim(getattr(ev, f)) for f in names))


class Trace:
    """Records, tail, JSONL sink and running hash of one simulation run."""

    def __init__(self, *, keep: int = 2000, jsonl: IO[str] | None = None, hash_packets: bool = True) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self._tail: deque[tuple[Any, ...]] = deque(maxlen=keep)
        self._jsonl = jsonl
        self.hash_packets = hash_packets
        self.records = 0
        self.packets = 0

    def record(self, t_us: int, node: str, event: str, *values: Any) -> None:
        """Append one record ``(t_us, node, event, *values)``; values must be primitives."""
        rec = (t_us, node, event, *values)
        self._h.update(repr(rec).encode())
        self._tail.append(rec)
        self.records += 1
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(self.as_dict(rec), default=_prim) + "\n")

    def record_event(self, t_us: int, node: str, ev: Any) -> tuple[Any, ...]:
        """Record a core event (see ``describe_event``); returns the flattened tuple."""
        flat = describe_event(ev)
        self.record(t_us, node, *flat)
        return flat

    def packet(self, t_us: int, src: int, dst: int, data: bytes) -> None:
        """Fold one datagram or stream hop into the hash (not kept)."""
        self.packets += 1
        if self.hash_packets:
            h = self._h
            h.update(_PKT.pack(t_us, src, dst, len(data)))
            h.update(data)

    def hexdigest(self) -> str:
        """The running hash of everything recorded so far."""
        return self._h.hexdigest()

    @staticmethod
    def as_dict(rec: tuple[Any, ...]) -> dict[str, Any]:
        """A record as the JSON object written to the JSONL sink."""
        t_us, node, event, *values = rec
        names = FIELDS.get(event, ())
        d: dict[str, Any] = {"t": t_us / 1e6, "node": node, "event": event}
        for i, v in enumerate(values):
            d[names[i] if i < len(names) else f"v{i}"] = v
        return d

    def tail(self, n: int = 50) -> str:
        """The last ``n`` records, one per line, for failure messages."""
        recs = list(self._tail)[-n:]
        return "\n".join(f"{r[0] / 1e6:12.6f} {r[1]} {r[2]} {' '.join(map(str, r[3:]))}" for r in recs)
