"""memberlist message codec: bodies, compound and CRC framing (memberlist-wire.md sections 2-5).

Theory of operation. go-msgpack writes a Go struct as a map keyed by field name, keys in ascending
byte order, strings and byte slices both as the old "raw" family (fixstr/str16/str32), nil slices as
msgpack nil, integers in their smallest form. ``msgpack.packb(use_bin_type=False)`` of a dict built in
sorted key order is byte-exact with that, so every encoder here builds its dict in sorted order.
Decoders are lenient the way Go's is: unknown keys are ignored, missing keys take zero values, nil is
accepted for any bytes or string field, bin types and an array of ints are accepted for ``Vsn``.

Every decode failure is a ``DecodeError``; cores catch it at their edge and count it. Node names are
interned as they are decoded, and push-pull node states are memoized by their bytes (a member's row
is the same in every push-pull until it changes), so a big cluster decodes each row about once.
Layering (innermost first): message -> compound -> compress -> CRC -> encrypt. This module does the
message, compound and CRC layers; ``lzw``/``compress`` and ``keyring`` do the outer ones, and
``packet`` ties the layers together for UDP and TCP.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from meshnet.core.errors import DecodeError
from meshnet.gossip.messages import (
    DEFAULT_VSN,
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPingReq,
    Message,
    MessageType,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)

__all__ = [
    "encode_message",
    "decode_message",
    "encode_compound",
    "decode_compound",
    "encode_crc",
    "decode_crc",
    "pack",
    "unpack_one",
    "encode_push_pull",
    "encode_push_pull_parts",
    "encode_push_state",
    "decode_push_pull",
    "MAX_COMPOUND_PARTS",
]

MAX_COMPOUND_PARTS = 255
_T = MessageType


def pack(obj: Any) -> bytes:
    """msgpack the way go-msgpack's default MsgpackHandle does (raw strings, no bin)."""
    return msgpack.packb(obj, use_bin_type=False)


def unpack_one(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode one msgpack value at ``offset``; return it and the offset after it."""
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(memoryview(data)[offset:])
    try:
        value = unpacker.unpack()
    except msgpack.OutOfData as exc:
        raise DecodeError("truncated msgpack value") from exc
    except Exception as exc:  # msgpack raises several types for garbage
        raise DecodeError(f"bad msgpack: {exc}") from exc
    return value, offset + unpacker.tell()


# --- field helpers -------------------------------------------------------------------------------


def _map(value: Any, what: str) -> dict[bytes, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a map, got {type(value).__name__}")
    return value


def _int(m: dict, key: bytes, lo: int = 0, hi: int = 2**64 - 1) -> int:
    v = m.get(key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int):
        raise DecodeError(f"{key.decode()}: expected an integer")
    if not lo <= v <= hi:
        raise DecodeError(f"{key.decode()}: {v} out of range")
    return v


def _bool(m: dict, key: bytes) -> bool:
    v = m.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise DecodeError(f"{key.decode()}: expected a bool")
    return v


def _bytes(m: dict, key: bytes, *, nil: bool = False) -> bytes | None:
    v = m.get(key)
    if v is None:
        return None if nil else b""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, str):  # not produced with raw=True, but be lenient
        return v.encode()
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) and 0 <= x <= 255 for x in v):
        return bytes(v)
    raise DecodeError(f"{key.decode()}: expected bytes")


def _str(m: dict, key: bytes) -> str:
    raw = _bytes(m, key)
    assert raw is not None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{key.decode()}: not UTF-8") from exc


def _name(m: dict, key: bytes) -> str:
    """A node name, interned: every message about a member then shares one string object, so the
    member tables' lookups compare names by identity."""
    return sys.intern(_str(m, key))


def _vsn(m: dict) -> bytes:
    raw = _bytes(m, b"Vsn")
    return raw if raw is not None else b""


_U32 = 2**32 - 1
_U16 = 2**16 - 1


# --- bodies -------------------------------------------------------------------------------------


def _encode_body(msg: Message) -> dict[str, Any]:
    """The Go struct as a dict in sorted key order (omitempty applied)."""
    if isinstance(msg, Ping):
        d: dict[str, Any] = {"Node": msg.node, "SeqNo": msg.seq_no}
        if msg.source_addr:
            d["SourceAddr"] = msg.source_addr
        if msg.source_node:
            d["SourceNode"] = msg.source_node
        if msg.source_port:
            d["SourcePort"] = msg.source_port
        return d
    if isinstance(msg, IndirectPingReq):
        d = {"Nack": msg.nack, "Node": msg.node, "Port": msg.port, "SeqNo": msg.seq_no}
        if msg.source_addr:
            d["SourceAddr"] = msg.source_addr
        if msg.source_node:
            d["SourceNode"] = msg.source_node
        if msg.source_port:
            d["SourcePort"] = msg.source_port
        d["Target"] = msg.target
        return d
    if isinstance(msg, Ack):
        return {"Payload": msg.payload, "SeqNo": msg.seq_no}
    if isinstance(msg, Nack):
        return {"SeqNo": msg.seq_no}
    if isinstance(msg, ErrResp):
        return {"Error": msg.error}
    if isinstance(msg, (Suspect, Dead)):
        return {"From": msg.from_node, "Incarnation": msg.incarnation, "Node": msg.node}
    if isinstance(msg, Alive):
        return {
            "Addr": msg.addr,
            "Incarnation": msg.incarnation,
            "Meta": msg.meta,
            "Node": msg.node,
            "Port": msg.port,
            "Vsn": msg.vsn,
        }
    raise TypeError(f"no plain body encoding for {type(msg).__name__}")


def encode_message(msg: Message) -> bytes:
    """Type byte + body, exactly as memberlist 0.2.2 writes it.

    ``UserMsg`` is the UDP form (``08`` + raw bytes); ``PushPull`` is the stream form.
    """
    if isinstance(msg, UserMsg):
        return b"\x08" + msg.payload
    if isinstance(msg, PushPull):
        return encode_push_pull(msg)
    return bytes((msg.TYPE,)) + pack(_encode_body(msg))


#: Message names for error texts (``MessageType(t).name`` per message is measurably slow).
_TYPE_NAMES = {t.value: t.name.lower() for t in MessageType}


def _decode_body(mtype: int, body: Any) -> Message:
    if type(body) is not dict:
        _map(body, _TYPE_NAMES[mtype])
    m: dict[bytes, Any] = body
    if mtype == _T.PING:
        return Ping(
            seq_no=_int(m, b"SeqNo", hi=_U32),
            node=_name(m, b"Node"),
            source_addr=_bytes(m, b"SourceAddr") or b"",
            source_port=_int(m, b"SourcePort", hi=_U16),
            source_node=_name(m, b"SourceNode"),
        )
    if mtype == _T.INDIRECT_PING:
        return IndirectPingReq(
            seq_no=_int(m, b"SeqNo", hi=_U32),
            target=_bytes(m, b"Target") or b"",
            port=_int(m, b"Port", hi=_U16),
            node=_name(m, b"Node"),
            nack=_bool(m, b"Nack"),
            source_addr=_bytes(m, b"SourceAddr") or b"",
            source_port=_int(m, b"SourcePort", hi=_U16),
            source_node=_name(m, b"SourceNode"),
        )
    if mtype == _T.ACK_RESP:
        return Ack(seq_no=_int(m, b"SeqNo", hi=_U32), payload=_bytes(m, b"Payload", nil=True))
    if mtype == _T.NACK_RESP:
        return Nack(seq_no=_int(m, b"SeqNo", hi=_U32))
    if mtype == _T.ERR:
        return ErrResp(error=_str(m, b"Error"))
    if mtype == _T.SUSPECT:
        return Suspect(
            incarnation=_int(m, b"Incarnation", hi=_U32), node=_name(m, b"Node"), from_node=_name(m, b"From")
        )
    if mtype == _T.DEAD:
        return Dead(
            incarnation=_int(m, b"Incarnation", hi=_U32), node=_name(m, b"Node"), from_node=_name(m, b"From")
        )
    if mtype == _T.ALIVE:
        return Alive(
            incarnation=_int(m, b"Incarnation", hi=_U32),
            node=_name(m, b"Node"),
            addr=_bytes(m, b"Addr") or b"",
            port=_int(m, b"Port", hi=_U16),
            meta=_bytes(m, b"Meta", nil=True),
            vsn=_vsn(m),
        )
    raise DecodeError(f"message type {mtype} has no plain body")


_PLAIN_TYPES = frozenset(
    {_T.PING, _T.INDIRECT_PING, _T.ACK_RESP, _T.NACK_RESP, _T.ERR, _T.SUSPECT, _T.DEAD, _T.ALIVE}
)


def decode_message(data: bytes) -> Message:
    """Decode one plain (non-framing) message: type byte + body.

    A UDP user message (``08`` + bytes) becomes ``UserMsg``. Framings (compound, compress, CRC,
    encrypt) raise ``DecodeError`` here; use ``packet.decode_datagram`` for a whole datagram.
    """
    if not data:
        raise DecodeError("empty message")
    mtype = data[0]
    if mtype == _T.USER:
        return UserMsg(payload=bytes(data[1:]))
    if mtype == _T.PUSH_PULL:
        return decode_push_pull(data)
    if mtype not in _PLAIN_TYPES:
        raise DecodeError(f"unexpected message type {mtype}")
    return _decode_body(mtype, _unpack_body(data))


def _unpack_body(data: bytes) -> Any:
    """The msgpack value after the type byte (trailing bytes ignored, as ``unpack_one`` does)."""
    try:
        return msgpack.unpackb(memoryview(data)[1:], raw=True, strict_map_key=False)
    except msgpack.ExtraData as exc:
        return exc.unpacked
    except Exception:  # truncated or garbage: let unpack_one word the error
        return unpack_one(data, 1)[0]


# --- compound (7) -------------------------------------------------------------------------------


def encode_compound(parts: Sequence[bytes]) -> bytes:
    """``07 | n:u8 | n x len:u16be | parts``. At most 255 parts of at most 65535 bytes."""
    if not 0 < len(parts) <= MAX_COMPOUND_PARTS:
        raise ValueError(f"a compound holds 1..{MAX_COMPOUND_PARTS} parts, got {len(parts)}")
    n = len(parts)
    return struct.pack(f">BB{n}H", _T.COMPOUND, n, *map(len, parts)) + b"".join(parts)


def decode_compound(data: bytes) -> tuple[list[bytes], bool]:
    """Split a compound (type byte included). Returns (parts, truncated).

    As memberlist does, parts whose length runs past the end are dropped and the rest kept.
    """
    if len(data) < 2 or data[0] != _T.COMPOUND:
        raise DecodeError("not a compound message")
    n = data[1]
    off = 2 + 2 * n
    if len(data) < off:
        raise DecodeError("truncated compound header")
    lengths = struct.unpack_from(f">{n}H", data, 2)
    parts: list[bytes] = []
    size = len(data)
    data = bytes(data)
    for ln in lengths:
        end = off + ln
        if end > size:
            return parts, True
        parts.append(data[off:end])
        off = end
    return parts, False


# --- CRC (12) -----------------------------------------------------------------------------------


def encode_crc(inner: bytes) -> bytes:
    """``0c | crc32-IEEE(inner):u32be | inner``."""
    return bytes((_T.HAS_CRC,)) + struct.pack(">I", zlib.crc32(inner)) + inner


def decode_crc(data: bytes) -> bytes:
    """Check and strip a CRC wrapper (type byte included)."""
    if len(data) < 5 or data[0] != _T.HAS_CRC:
        raise DecodeError("not a CRC message")
    (want,) = struct.unpack_from(">I", data, 1)
    inner = bytes(data[5:])
    if zlib.crc32(inner) != want:
        raise DecodeError("CRC mismatch")
    return inner


# --- push-pull (6) ------------------------------------------------------------------------------


def encode_push_state(s: PushNodeState) -> bytes:
    """One ``pushNodeState`` as it appears inside a push-pull frame."""
    return pack(_encode_state(s))


def encode_push_pull_parts(join: bool, states: Sequence[bytes], user_state: bytes) -> bytes:
    """``encode_push_pull`` from node states already encoded with ``encode_push_state``."""
    head = pack({"Join": join, "Nodes": len(states), "UserStateLen": len(user_state)})
    return b"".join((bytes((_T.PUSH_PULL,)), head, *states, user_state))


def _encode_state(s: PushNodeState) -> dict[str, Any]:
    return {
        "Addr": s.addr,
        "Incarnation": s.incarnation,
        "Meta": s.meta,
        "Name": s.name,
        "Port": s.port,
        "State": s.state,
        "Vsn": s.vsn,
    }


def encode_push_pull(pp: PushPull) -> bytes:
    """``06 | header | states... | user state``, unframed (no compression, no encryption)."""
    out = [
        bytes((_T.PUSH_PULL,)),
        pack({"Join": pp.join, "Nodes": len(pp.states), "UserStateLen": len(pp.user_state)}),
    ]
    out.extend(pack(_encode_state(s)) for s in pp.states)
    out.append(pp.user_state)
    return b"".join(out)


#: A peer may not claim more node states than this in one push-pull (memory bound).
MAX_PUSH_PULL_NODES = 1 << 20


def decode_push_pull(data: bytes) -> PushPull:
    """Decode a whole push-pull frame (type byte included)."""
    if not data or data[0] != _T.PUSH_PULL:
        raise DecodeError("not a push-pull message")
    data = bytes(data)
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(memoryview(data)[1:])
    cache = _STATE_CACHE
    try:
        head = _map(unpacker.unpack(), "pushPullHeader")
        n = _int(head, b"Nodes", hi=MAX_PUSH_PULL_NODES)
        ulen = _int(head, b"UserStateLen", hi=len(data))
        join = _bool(head, b"Join")
        states = []
        pos = 1 + unpacker.tell()
        for _ in range(n):
            unpacker.skip()
            end = 1 + unpacker.tell()
            raw = data[pos:end]
            pos = end
            state = cache.get(raw)
            if state is None:
                state = _decode_state(
                    _map(msgpack.unpackb(raw, raw=True, strict_map_key=False), "pushNodeState")
                )
                if len(cache) >= _STATE_CACHE_MAX:
                    del cache[next(iter(cache))]
                cache[raw] = state
            states.append(state)
        off = pos
    except DecodeError:
        raise
    except msgpack.OutOfData as exc:
        raise DecodeError("truncated push-pull") from exc
    except Exception as exc:
        raise DecodeError(f"bad push-pull: {exc}") from exc
    if off + ulen > len(data):
        raise DecodeError("truncated push-pull user state")
    return PushPull(join=join, states=tuple(states), user_state=data[off : off + ulen])


def _decode_state(m: dict[bytes, Any]) -> PushNodeState:
    return PushNodeState(
        name=_name(m, b"Name"),
        addr=_bytes(m, b"Addr") or b"",
        port=_int(m, b"Port", hi=_U16),
        meta=_bytes(m, b"Meta", nil=True),
        incarnation=_int(m, b"Incarnation", hi=_U32),
        state=_int(m, b"State", hi=255),
        vsn=_vsn(m),
    )


#: Decoded node states by their bytes: a member's state is the same in every push-pull until it
#: changes, so most are decoded once per process. Frozen values, bounded, oldest dropped first.
_STATE_CACHE: dict[bytes, PushNodeState] = {}
_STATE_CACHE_MAX = 16384


def iter_parts(messages: Iterable[Message]) -> list[bytes]:
    """Encode each message (helper for building compounds)."""
    return [encode_message(m) for m in messages]


__all__ += ["iter_parts", "MAX_PUSH_PULL_NODES", "DEFAULT_VSN"]
