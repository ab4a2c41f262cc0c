"""Whole UDP datagrams and TCP stream frames (memberlist-wire.md sections 5 and 6).

Theory of operation. A datagram is built innermost first: one message (or a compound of several),
then LZW compression if that makes it smaller, then the CRC wrapper, then AES-GCM encryption with
the keyring's primary key (version 1, a 12-byte nonce drawn from the injected ``rng``, empty AAD).
Decoding undoes the layers in reverse: decrypt (trying every key), check a top-level CRC, then
unwrap compress and compound recursively (Go nests them, ``crc(lzw(compound(...)))`` is real), at
most ``MAX_NESTING`` levels deep, returning the flat list of messages in wire order. The same rumour
reaches a node many times (and the simulator's nodes share one process), so decoded ``alive``,
``suspect`` and ``dead`` parts are memoized by their bytes (messages are frozen values), together
with whether the bytes are canonical, so a core can re-broadcast them without encoding them again.

A TCP stream carries one frame per direction: a plain message (push-pull ``06|header|states|user``,
ping, ack, err, or a TCP user message ``08|{UserMsgLen}|bytes``), optionally compressed as a whole
(``09|compress``), optionally encrypted as a whole (``0a|len:u32be|vsn|nonce|ct+tag`` with the five
header bytes as AAD). ``stream_frame_length`` scans msgpack structure without decoding it so the shell
can tell when one whole frame has arrived.

Everything that comes from the network raises only ``DecodeError``; each public decoder wraps any
unexpected exception from lower layers so nothing else can escape.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import msgpack

from meshnet.core.errors import DecodeError, LocalProtocolError
from meshnet.gossip import codec, lzw
from meshnet.gossip.keyring import Keyring, decrypt_payload, encrypt, encrypted_length
from meshnet.gossip.messages import Message, MessageType, UserMsg

__all__ = [
    "encode_datagram",
    "decode_datagram",
    "decode_datagram_parts",
    "encode_stream",
    "decode_stream",
    "stream_frame_length",
    "encode_compress",
    "decode_compress",
    "encode_stream_user_msg",
    "set_lzw_memo",
    "LZW_MEMO_DEFAULT",
    "lzw_memo_stats",
    "MAX_NESTING",
    "MAX_STREAM_FRAME",
    "MAX_DATAGRAM_DECOMPRESSED",
    "MAX_STREAM_DECOMPRESSED",
    "MAX_UDP_PAYLOAD",
]

_T = MessageType

#: How many compound/compress layers a datagram may nest.
MAX_NESTING = 8
#: memberlist's limit on an inbound encrypted stream's length field, applied to every stream frame.
MAX_STREAM_FRAME = 20 * 1024 * 1024
#: Upper bound on what one compressed datagram may inflate to.
MAX_DATAGRAM_DECOMPRESSED = 1 << 20
#: Upper bound on what one compressed stream frame may inflate to.
MAX_STREAM_DECOMPRESSED = MAX_STREAM_FRAME
#: The largest payload an IPv4 UDP datagram can carry.
MAX_UDP_PAYLOAD = 65507
#: LZW is memberlist's only compression algorithm (``lzwAlgo``).
_LZW_ALGO = 0
_NONCE_SIZE = 12
_ENCRYPTION_VERSION = 1

#: Message types memberlist 0.2.2's packet handler dispatches (compound and compress are unwrapped).
_DATAGRAM_TYPES = frozenset(
    {_T.PING, _T.INDIRECT_PING, _T.ACK_RESP, _T.NACK_RESP, _T.SUSPECT, _T.ALIVE, _T.DEAD, _T.USER}
)
#: Message types that may start a (decrypted, decompressed) stream frame.
_STREAM_TYPES = frozenset({_T.PING, _T.ACK_RESP, _T.ERR, _T.PUSH_PULL, _T.USER})


# --- compress (9) ----------------------------------------------------------------------------------


class _Memo:
    """A bounded map ``bytes -> bytes`` (oldest entries go first), bounded by entries and bytes."""

    __slots__ = ("map", "max_entries", "max_bytes", "max_item", "size", "hits", "misses")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.map: dict[bytes, bytes] = {}
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_item = max_bytes // 8
        self.size = 0
        self.hits = 0
        self.misses = 0

    def put(self, key: bytes, value: bytes) -> None:
        cost = len(key) + len(value)
        if cost > self.max_item or key in self.map:
            return
        m = self.map
        while m and (len(m) >= self.max_entries or self.size + cost > self.max_bytes):
            old = next(iter(m))
            self.size -= len(old) + len(m.pop(old))
        m[key] = value
        self.size += cost


#: LZW results memoized by bytes, both ways: ``plain -> lzw`` (a node often sends the same compound
#: to several gossip targets, and push-pull frames repeat) and ``lzw -> plain`` (filled by our own
#: compression and by every inflate, so identical compressed bytes are inflated once; in the
#: simulator every datagram is compressed and inflated in one process). Both are exact functions of
#: their key, so a hit returns what the codec would; remote input can only churn them (bounded).
#: Entries and bytes of each memo by default: an agent only gains from a compound sent to several
#: gossip targets, so they stay small (RSS); the simulator, which inflates every datagram it
#: compressed, sets larger ones (``sim.cluster``).
LZW_MEMO_DEFAULT = (64, 256 << 10)
_DEFLATED = _Memo(*LZW_MEMO_DEFAULT)
_INFLATED = _Memo(*LZW_MEMO_DEFAULT)


def set_lzw_memo(max_entries: int, max_bytes: int) -> None:
    """Resize (and empty) the LZW memos; ``max_entries=0`` disables them."""
    global _DEFLATED, _INFLATED
    _DEFLATED = _Memo(max_entries, max_bytes)
    _INFLATED = _Memo(max_entries, max_bytes)


def lzw_memo_stats() -> dict[str, int]:
    """Hits and misses of the two LZW memos since they were created."""
    return {
        "deflate_hits": _DEFLATED.hits,
        "deflate_misses": _DEFLATED.misses,
        "inflate_hits": _INFLATED.hits,
        "inflate_misses": _INFLATED.misses,
    }


def _lzw_compress(inner: bytes) -> bytes:
    memo = _DEFLATED
    out = memo.map.get(inner)
    if out is not None:
        memo.hits += 1
        return out
    memo.misses += 1
    out = lzw.compress(inner)
    if memo.max_entries:
        memo.put(inner, out)
        _INFLATED.put(out, inner)
    return out


def _lzw_decompress(buf: bytes, max_size: int) -> bytes:
    memo = _INFLATED
    out = memo.map.get(buf)
    if out is not None:
        memo.hits += 1
        if len(out) > max_size:
            raise DecodeError(f"lzw: output exceeds {max_size} bytes")
        return out
    memo.misses += 1
    out = lzw.decompress(buf, max_size=max_size)
    if memo.max_entries:
        memo.put(buf, out)
    return out


def encode_compress(inner: bytes) -> bytes:
    """``09 | msgpack {Algo: 0, Buf: lzw(inner)}``, as memberlist's compressPayload writes it."""
    return bytes((_T.COMPRESS,)) + codec.pack({"Algo": _LZW_ALGO, "Buf": _lzw_compress(bytes(inner))})


def decode_compress(data: bytes, *, max_size: int) -> bytes:
    """Inflate a compress wrapper (type byte included); the result is at most ``max_size`` bytes."""
    if not data or data[0] != _T.COMPRESS:
        raise DecodeError("not a compress message")
    body, _ = codec.unpack_one(data, 1)
    if not isinstance(body, dict):
        raise DecodeError("compress: expected a map")
    algo = body.get(b"Algo", 0)
    if isinstance(algo, bool) or not isinstance(algo, int):
        raise DecodeError("compress: Algo is not an integer")
    if algo != _LZW_ALGO:
        raise DecodeError(f"compress: unsupported algorithm {algo}")
    buf = body.get(b"Buf")
    if buf is None:
        buf = b""
    if not isinstance(buf, bytes):
        raise DecodeError("compress: Buf is not a byte string")
    return _lzw_decompress(buf, max_size)


def _seal(keyring: Keyring, plain: bytes, aad: bytes, nonce: bytes) -> bytes:
    key = keyring.primary
    return encrypt(_ENCRYPTION_VERSION, key, plain, aad, nonce, cipher=keyring.cipher(key))


# --- datagrams -------------------------------------------------------------------------------------


def encode_datagram(
    messages: Sequence[bytes],
    *,
    crc: bool,
    compress: bool,
    keyring: Keyring | None,
    rng: random.Random,
    udp_buffer_size: int = 1400,
) -> bytes:
    """Frame already-encoded messages as one UDP datagram.

    One message is sent as itself, several as a compound (at most 255). Then: LZW compression if
    ``compress`` and the result is strictly smaller, the CRC wrapper if ``crc``, and encryption
    (version 1, primary key, nonce from ``rng``, empty AAD) if ``keyring`` is given.
    ``udp_buffer_size`` is the sender's budget for piggybacking (the caller's concern); the datagram
    is never split, and only one that cannot fit in any UDP datagram is refused.
    """
    if not messages:
        raise LocalProtocolError("encode_datagram needs at least one message")
    payload = bytes(messages[0]) if len(messages) == 1 else codec.encode_compound(messages)
    if compress:
        packed = encode_compress(payload)
        if len(packed) < len(payload):
            payload = packed
    if crc:
        payload = codec.encode_crc(payload)
    if keyring is not None:
        nonce = rng.randbytes(_NONCE_SIZE)
        payload = _seal(keyring, payload, b"", nonce)
    if len(payload) > MAX_UDP_PAYLOAD:
        raise LocalProtocolError(
            f"datagram of {len(payload)} bytes exceeds the UDP maximum {MAX_UDP_PAYLOAD} "
            f"(budget {udp_buffer_size}); send large payloads over a stream"
        )
    return payload


def decode_datagram(data: bytes, *, keyring: Keyring | None, verify_incoming: bool = True) -> list[Message]:
    """Decode one UDP datagram into its messages, in wire order.

    With a keyring, the datagram is decrypted by trying every key (primary first); if none works it
    is rejected when ``verify_incoming`` and treated as plaintext otherwise. A top-level CRC wrapper
    is checked; compound and compress layers are unwrapped recursively. A truncated compound keeps
    the parts that arrived (as memberlist does) but is rejected if none did. Raises ``DecodeError``.
    """
    return [msg for msg, _ in decode_datagram_parts(data, keyring=keyring, verify_incoming=verify_incoming)]


def decode_datagram_parts(
    data: bytes, *, keyring: Keyring | None, verify_incoming: bool = True
) -> list[tuple[Message, bytes | None]]:
    """``decode_datagram``, each message paired with its wire bytes when they are canonical.

    The bytes are given only for the broadcastable messages (``alive``, ``suspect``, ``dead``) and
    only when ``codec.encode_message`` of the message would produce exactly them, so a core can
    re-broadcast what it received without encoding it again; otherwise None.
    """
    try:
        data = bytes(data)
        if keyring is not None:
            try:
                data = decrypt_payload(keyring, data, b"")
            except DecodeError:
                if verify_incoming:
                    raise
        if data and data[0] == _T.HAS_CRC:
            data = codec.decode_crc(data)
        out: list[tuple[Message, bytes | None]] = []
        _decode_inner(data, out, 0)
        return out
    except DecodeError:
        raise
    except Exception as exc:  # defence in depth: nothing but DecodeError leaves a decoder
        raise DecodeError(f"malformed datagram: {type(exc).__name__}: {exc}") from exc


#: Decoded broadcast parts by their bytes. The same rumour reaches a node many times and a
#: simulated cluster's nodes share the process, so most parts are decoded once. Values are frozen
#: messages, safe to share. Bounded; the oldest entries go first.
_PART_CACHE: dict[bytes, tuple[Message, bytes | None]] = {}
_PART_CACHE_MAX = 16384
_CACHED_TYPES = frozenset({_T.SUSPECT, _T.ALIVE, _T.DEAD})


def _decode_part(part: bytes) -> tuple[Message, bytes | None]:
    mtype = part[0]
    if mtype not in _CACHED_TYPES:
        if mtype not in _DATAGRAM_TYPES:
            raise DecodeError(f"message type {mtype} is not valid in a datagram")
        return codec.decode_message(part), None
    hit = _PART_CACHE.get(part)
    if hit is not None:
        return hit
    msg = codec.decode_message(part)
    entry = (msg, part if codec.encode_message(msg) == part else None)
    cache = _PART_CACHE
    if len(cache) >= _PART_CACHE_MAX:
        del cache[next(iter(cache))]
    cache[part] = entry
    return entry


def _decode_inner(data: bytes, out: list[tuple[Message, bytes | None]], depth: int) -> None:
    if not data:
        raise DecodeError("empty message")
    mtype = data[0]
    if mtype == _T.COMPOUND or mtype == _T.COMPRESS:
        if depth >= MAX_NESTING:
            raise DecodeError(f"compound/compress nested deeper than {MAX_NESTING}")
        if mtype == _T.COMPRESS:
            _decode_inner(decode_compress(data, max_size=MAX_DATAGRAM_DECOMPRESSED), out, depth + 1)
            return
        parts, truncated = codec.decode_compound(data)
        if not parts:
            raise DecodeError("truncated compound" if truncated else "empty compound")
        cached = _PART_CACHE.get
        for part in parts:
            hit = cached(part)
            if hit is not None:
                out.append(hit)
            elif part and part[0] != _T.COMPOUND and part[0] != _T.COMPRESS:
                out.append(_decode_part(part))
            else:
                _decode_inner(part, out, depth + 1)
        return
    out.append(_decode_part(data))


# --- streams ---------------------------------------------------------------------------------------


def encode_stream_user_msg(payload: bytes) -> bytes:
    """A TCP user message: ``08 | {UserMsgLen} | payload``."""
    return bytes((_T.USER,)) + codec.pack({"UserMsgLen": len(payload)}) + bytes(payload)


def encode_stream(message: bytes, *, compress: bool, keyring: Keyring | None, rng: random.Random) -> bytes:
    """Frame one already-encoded stream message (push-pull, ping, ack, err, TCP user message).

    With ``compress`` the whole frame becomes ``09|compress`` (always, even if larger, as memberlist
    does on streams). With a keyring it is sealed as ``0a|len:u32be|1|nonce|ct+tag``, AAD = the five
    header bytes, with the primary key and a nonce from ``rng``.
    """
    frame = bytes(message)
    if compress:
        frame = encode_compress(frame)
    if keyring is not None:
        header = bytes((_T.ENCRYPT,)) + struct.pack(">I", encrypted_length(_ENCRYPTION_VERSION, len(frame)))
        nonce = rng.randbytes(_NONCE_SIZE)
        frame = header + _seal(keyring, frame, header, nonce)
    return frame


def decode_stream(data: bytes, *, keyring: Keyring | None, verify_incoming: bool = True) -> Message:
    """Decode one complete stream frame into its message.

    An encrypted frame needs a keyring; with a keyring and ``verify_incoming`` a plaintext frame is
    rejected. One compress layer is unwrapped. A TCP user message decodes to ``UserMsg``. Bytes after
    the frame are ignored. Raises ``DecodeError``.
    """
    try:
        data = bytes(data)
        if not data:
            raise DecodeError("empty stream")
        if data[0] == _T.ENCRYPT:
            if keyring is None:
                raise DecodeError("remote state is encrypted and encryption is not configured")
            if len(data) < 5:
                raise DecodeError("truncated encrypted stream header")
            (length,) = struct.unpack_from(">I", data, 1)
            if length > MAX_STREAM_FRAME:
                raise DecodeError(f"encrypted stream of {length} bytes exceeds {MAX_STREAM_FRAME}")
            if len(data) < 5 + length:
                raise DecodeError("truncated encrypted stream")
            data = decrypt_payload(keyring, data[5 : 5 + length], data[:5])
        elif keyring is not None and verify_incoming:
            raise DecodeError("encryption is configured but remote state is not encrypted")
        if data and data[0] == _T.COMPRESS:
            data = decode_compress(data, max_size=MAX_STREAM_DECOMPRESSED)
        if not data:
            raise DecodeError("empty stream message")
        mtype = data[0]
        if mtype not in _STREAM_TYPES:
            raise DecodeError(f"message type {mtype} is not valid on a stream")
        if mtype == _T.USER:
            return _decode_stream_user_msg(data)
        return codec.decode_message(data)
    except DecodeError:
        raise
    except Exception as exc:  # defence in depth
        raise DecodeError(f"malformed stream: {type(exc).__name__}: {exc}") from exc


def _decode_stream_user_msg(data: bytes) -> UserMsg:
    head, off = codec.unpack_one(data, 1)
    if not isinstance(head, dict):
        raise DecodeError("userMsgHeader: expected a map")
    n = head.get(b"UserMsgLen", 0)
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DecodeError("userMsgHeader: UserMsgLen is not a non-negative integer")
    if off + n > len(data):
        raise DecodeError("truncated TCP user message")
    return UserMsg(payload=data[off : off + n])


def stream_frame_length(buf: bytes, *, keyring: Keyring | None) -> int | None:
    """How many leading bytes of ``buf`` form one complete stream frame; None if more are needed.

    Raises ``DecodeError`` when the bytes cannot start a valid frame or the frame would exceed
    ``MAX_STREAM_FRAME``. Only structure is checked here; ``decode_stream`` does the rest.
    """
    try:
        return _frame_length(bytes(buf), keyring)
    except DecodeError:
        raise
    except Exception as exc:  # defence in depth
        raise DecodeError(f"malformed stream: {type(exc).__name__}: {exc}") from exc


def _frame_length(buf: bytes, keyring: Keyring | None) -> int | None:
    if not buf:
        return None
    mtype = buf[0]
    if mtype == _T.ENCRYPT:
        if keyring is None:
            raise DecodeError("remote state is encrypted and encryption is not configured")
        if len(buf) < 5:
            return None
        (length,) = struct.unpack_from(">I", buf, 1)
        if length > MAX_STREAM_FRAME:
            raise DecodeError(f"encrypted stream of {length} bytes exceeds {MAX_STREAM_FRAME}")
        return _need(buf, 5 + length)
    if mtype in (_T.COMPRESS, _T.PING, _T.ACK_RESP, _T.ERR):
        return _skip_value(buf, 1)
    if mtype == _T.PUSH_PULL:
        end = _skip_value(buf, 1)
        if end is None:
            return None
        head, _ = codec.unpack_one(buf[:end], 1)
        if not isinstance(head, dict):
            raise DecodeError("pushPullHeader: expected a map")
        nodes = _header_int(head, b"Nodes", codec.MAX_PUSH_PULL_NODES)
        ulen = _header_int(head, b"UserStateLen", MAX_STREAM_FRAME)
        end = _skip_values_fast(buf, end, nodes)
        return None if end is None else _need(buf, end + ulen)
    if mtype == _T.USER:
        end = _skip_value(buf, 1)
        if end is None:
            return None
        head, _ = codec.unpack_one(buf[:end], 1)
        if not isinstance(head, dict):
            raise DecodeError("userMsgHeader: expected a map")
        return _need(buf, end + _header_int(head, b"UserMsgLen", MAX_STREAM_FRAME))
    raise DecodeError(f"message type {mtype} cannot start a stream frame")


def _header_int(head: dict, key: bytes, hi: int) -> int:
    v = head.get(key, 0)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise DecodeError(f"{key.decode()}: not an integer in 0..{hi}")
    return v


def _need(buf: bytes, end: int) -> int | None:
    if end > MAX_STREAM_FRAME + 5:
        raise DecodeError(f"stream frame of {end} bytes exceeds {MAX_STREAM_FRAME}")
    return end if len(buf) >= end else None


# Fixed sizes of msgpack values by first byte (header included), for the scalar types.
_FIXED = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9,
          0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}  # fmt: skip
# Length-prefixed byte payloads: first byte -> (length field size, extra bytes after the length).
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
          0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}  # fmt: skip
# Containers: first byte -> (count field size, values per element).
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def _skip_values_fast(buf: bytes, off: int, count: int) -> int | None:
    """``_skip_value`` for many values: msgpack's C skipper when the values are all there and well
    formed (the same offset ``_skip_value`` finds), ``_skip_value`` itself otherwise."""
    if count and off < len(buf):
        unpacker = msgpack.Unpacker(max_buffer_size=len(buf))
        unpacker.feed(memoryview(buf)[off:])
        try:
            for _ in range(count):
                unpacker.skip()
        except Exception:  # incomplete or malformed: let the exact walker decide
            pass
        else:
            end = off + unpacker.tell()
            if end <= MAX_STREAM_FRAME + 5:
                return end
    return _skip_value(buf, off, count)


def _skip_value(buf: bytes, off: int, count: int = 1) -> int | None:
    """Offset after ``count`` msgpack values starting at ``off``; None if ``buf`` ends first.

    Iterative (no recursion), and every value takes at least one byte, so the work is bounded by
    the buffer's length whatever the counts claim.
    """
    n = len(buf)
    remaining = count
    while remaining:
        if off + remaining > n:
            if off + remaining > MAX_STREAM_FRAME + 5:
                raise DecodeError("msgpack value claims more elements than a stream may carry")
            return None
        b = buf[off]
        remaining -= 1
        if b <= 0x7F or b >= 0xE0:
            off += 1
        elif b <= 0x8F:
            off += 1
            remaining += 2 * (b & 0x0F)
        elif b <= 0x9F:
            off += 1
            remaining += b & 0x0F
        elif b <= 0xBF:
            off += 1 + (b & 0x1F)
        elif b in _FIXED:
            off += _FIXED[b]
        elif b in _SIZED:
            width, extra = _SIZED[b]
            if off + 1 + width > n:
                return None
            off += 1 + width + extra + int.from_bytes(buf[off + 1 : off + 1 + width], "big")
        elif b in _CONTAINERS:
            width, per = _CONTAINERS[b]
            if off + 1 + width > n:
                return None
            remaining += per * int.from_bytes(buf[off + 1 : off + 1 + width], "big")
            off += 1 + width
        else:  # 0xC1 is never used
            raise DecodeError(f"invalid msgpack byte 0x{b:02x}")
        if off > MAX_STREAM_FRAME + 5:
            raise DecodeError(f"stream frame exceeds {MAX_STREAM_FRAME} bytes")
    return off if off <= n else None
