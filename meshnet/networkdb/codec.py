"""NetworkDB's wire codec: msgpack behind a one-byte prefix, versioned, with size limits.

Theory of operation: a payload is ``6e | msgpack [version, kind, sender, cluster_id, body]``. The prefix
``0x6e`` is outside serf's user-message codes (0..9), so serf peers ignore NetworkDB traffic; any other
first byte is "not ours" (``is_networkdb``). ``version`` is 1; a payload of another version is refused
with ``DecodeError`` (a future version adds codes, never changes these). Bodies are positional arrays:

    TableEvents       [network, [entry...]]
    AttachmentEvents  [[attachment...]]
    BulkSync          [sync_id, mode, part, parts, [network...], [attachment...], [[network, digest]...],
                       [want network...], [[network, [entry...]]...]]
    StateSync         [sync_id, is_reply, part, parts, [attachment...]]
    PushPullState     [[attachment...]]
    Request/Response  [request_id, payload]
    entry             [table, key, value(bin), owner, ltime, flags(1 deleted | 2 hidden), reap_in_ms]
    attachment        [node, network, ltime, leaving, floor, reap_in_ms]

Decoding validates every field (types, lengths from ``Limits``, ltime below 2**62) and raises
``DecodeError`` for anything else, including msgpack's own exceptions; it never raises another type.

Gossip batches are assembled from entries encoded one by one (``encode_wire_entry``), so the broadcast
queue knows each item's size and a batch is a concatenation (``encode_table_events_raw``). Bulk syncs
and state syncs larger than ``Limits.max_message_bytes`` are split into parts (``encode_bulk_sync``,
``encode_state_sync``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from meshnet.core.errors import DecodeError

from .config import PREFIX, NetworkDBConfig
from .lamport import MAX_LTIME
from .messages import (
    AttachmentEvents,
    Body,
    BulkSync,
    Envelope,
    Kind,
    PushPullState,
    Request,
    Response,
    StateSync,
    SyncMode,
    TableEvents,
    WireAttachment,
    WireEntry,
)

__all__ = [
    "VERSION",
    "Limits",
    "is_networkdb",
    "encode",
    "decode",
    "encode_wire_entry",
    "encode_table_events_raw",
    "encode_bulk_sync",
    "encode_state_sync",
    "table_events_overhead",
]

VERSION = 1
_MAX_CLUSTER_ID = 64
_MAX_REAP_MS = 2**40
_MAX_ID = 2**63
_MAX_PARTS = 65535


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits every decoded field is checked against."""

    max_table_bytes: int = 128
    max_network_bytes: int = 128
    max_key_bytes: int = 512
    max_node_name_bytes: int = 128
    max_value_bytes: int = 64 * 1024
    max_request_bytes: int = 64 * 1024
    max_message_bytes: int = 4 * 1024 * 1024

    @classmethod
    def from_config(cls, config: NetworkDBConfig) -> Limits:
        return cls(
            max_table_bytes=config.max_table_bytes,
            max_network_bytes=config.max_network_bytes,
            max_key_bytes=config.max_key_bytes,
            max_node_name_bytes=config.max_node_name_bytes,
            max_value_bytes=config.max_value_bytes,
            max_request_bytes=config.max_request_bytes,
            max_message_bytes=config.max_message_bytes,
        )

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload ``decode`` looks at (a message plus generous framing slack)."""
        return self.max_message_bytes + 64 * 1024


def is_networkdb(data: bytes) -> bool:
    """Whether a gossip user message is NetworkDB's (starts with the prefix byte)."""
    return len(data) > 0 and data[0] == PREFIX


# -- encoding ---------------------------------------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True)


def _pack(obj: Any) -> bytes:
    return _packer.pack(obj)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _entry_list(w: WireEntry) -> list[Any]:
    flags = (1 if w.deleted else 0) | (2 if w.hidden else 0)
    return [w.table, w.key, w.value, w.owner, w.ltime, flags, w.reap_in_ms]


def _attachment_list(a: WireAttachment) -> list[Any]:
    return [a.node, a.network, a.ltime, a.leaving, a.floor, a.reap_in_ms]


def encode_wire_entry(w: WireEntry) -> bytes:
    """One entry, msgpack-encoded (a building block of table-event batches)."""
    return _pack(_entry_list(w))


def _header(kind: Kind, sender: str, cluster_id: str) -> bytes:
    return bytes((PREFIX, 0x95)) + _pack(VERSION) + _pack(int(kind)) + _pack(sender) + _pack(cluster_id)


def table_events_overhead(sender: str, cluster_id: str, network: str) -> int:
    """Bytes of a ``TableEvents`` payload around its entries (array headers at their widest)."""
    return len(_header(Kind.TABLE_EVENTS, sender, cluster_id)) + 1 + len(_pack(network)) + 5


def encode_table_events_raw(
    sender: str, cluster_id: str, network: str, raw_entries: Sequence[bytes]
) -> bytes:
    """A ``TableEvents`` payload from entries already encoded with ``encode_wire_entry``."""
    parts = [
        _header(Kind.TABLE_EVENTS, sender, cluster_id),
        b"\x92",
        _pack(network),
        _array_header(len(raw_entries)),
    ]
    parts.extend(raw_entries)
    return b"".join(parts)


def _body_list(body: Body) -> list[Any]:
    if isinstance(body, TableEvents):
        return [body.network, [_entry_list(e) for e in body.entries]]
    if isinstance(body, AttachmentEvents | PushPullState):
        return [[_attachment_list(a) for a in body.attachments]]
    if isinstance(body, BulkSync):
        return [
            body.sync_id,
            int(body.mode),
            body.part,
            body.parts,
            list(body.networks),
            [_attachment_list(a) for a in body.attachments],
            [[net, d] for net, d in body.digests],
            list(body.want),
            [[net, [_entry_list(e) for e in entries]] for net, entries in body.sections],
        ]
    if isinstance(body, StateSync):
        return [
            body.sync_id,
            body.is_reply,
            body.part,
            body.parts,
            [_attachment_list(a) for a in body.attachments],
        ]
    if isinstance(body, Request | Response):
        return [body.request_id, body.payload]
    raise TypeError(f"not a NetworkDB message body: {body!r}")


def encode(env: Envelope) -> bytes:
    """The payload for one envelope."""
    return _header(env.kind, env.sender, env.cluster_id) + _pack(_body_list(env.body))


def _chunk(sizes: Sequence[int], budget: int) -> list[int]:
    """Greedy split points: the index where each chunk starts (the first is 0)."""
    starts = [0]
    used = 0
    for i, n in enumerate(sizes):
        if used + n > budget and used > 0:
            starts.append(i)
            used = 0
        used += n
    return starts


def encode_bulk_sync(
    sender: str,
    cluster_id: str,
    *,
    sync_id: int,
    mode: SyncMode,
    networks: Sequence[str],
    attachments: Sequence[WireAttachment],
    digests: Sequence[tuple[str, int]] = (),
    want: Sequence[str] = (),
    sections: Sequence[tuple[str, Sequence[WireEntry]]] = (),
    max_bytes: int,
) -> list[bytes]:
    """One or more ``BulkSync`` payloads of about ``max_bytes`` at most, carrying everything given.

    Attachments come first (a receiver admits entries by attachment), then entries network by network;
    every part repeats ``networks``, ``digests`` and ``want``, so each part merges on its own.
    """
    header = _header(Kind.BULK_SYNC, sender, cluster_id)
    packed_networks = _pack(list(networks))
    packed_meta = _pack([[net, d] for net, d in digests]) + _pack(list(want))
    budget = max(1024, max_bytes - len(header) - len(packed_networks) - len(packed_meta) - 64)
    # items: (section network or None for an attachment, raw bytes)
    items: list[tuple[str | None, bytes]] = [(None, _pack(_attachment_list(a))) for a in attachments]
    net_overhead: dict[str, int] = {}
    empty: list[str] = []
    for network, entries in sections:
        net_overhead[network] = len(_pack(network)) + 6
        if not entries:
            empty.append(network)
        items.extend((network, encode_wire_entry(w)) for w in entries)
    sizes = [len(raw) + (net_overhead[net] if net is not None else 0) for net, raw in items]
    starts = _chunk(sizes, budget)
    bounds = list(zip(starts, starts[1:] + [len(items)]))
    parts = len(bounds)
    out: list[bytes] = []
    for i, (lo, hi) in enumerate(bounds):
        atts = [raw for net, raw in items[lo:hi] if net is None]
        secs: list[tuple[str, list[bytes]]] = [(net, []) for net in empty] if i == 0 else []
        for net, raw in items[lo:hi]:
            if net is None:
                continue
            if not secs or secs[-1][0] != net:
                secs.append((net, []))
            secs[-1][1].append(raw)
        chunks = [header, b"\x99", _pack(sync_id), _pack(int(mode)), _pack(i), _pack(parts), packed_networks]
        chunks.append(_array_header(len(atts)))
        chunks.extend(atts)
        chunks.append(packed_meta)
        chunks.append(_array_header(len(secs)))
        for net, raws in secs:
            chunks.extend((b"\x92", _pack(net), _array_header(len(raws))))
            chunks.extend(raws)
        out.append(b"".join(chunks))
    return out


def encode_state_sync(
    sender: str,
    cluster_id: str,
    *,
    sync_id: int,
    is_reply: bool,
    attachments: Sequence[WireAttachment],
    max_bytes: int,
) -> list[bytes]:
    """One or more ``StateSync`` payloads carrying ``attachments``."""
    header = _header(Kind.STATE_SYNC, sender, cluster_id)
    raws = [_pack(_attachment_list(a)) for a in attachments]
    starts = _chunk([len(r) for r in raws], max(1024, max_bytes - len(header) - 64))
    bounds = list(zip(starts, starts[1:] + [len(raws)]))
    out = []
    for i, (lo, hi) in enumerate(bounds):
        chunks = [header, b"\x95", _pack(sync_id), _pack(is_reply), _pack(i), _pack(len(bounds))]
        chunks.append(_array_header(hi - lo))
        chunks.extend(raws[lo:hi])
        out.append(b"".join(chunks))
    return out


# -- decoding ---------------------------------------------------------------------------------------


def _str(v: Any, what: str, max_bytes: int, *, allow_empty: bool = True) -> str:
    if not isinstance(v, str):
        raise DecodeError(f"{what}: expected a string, got {type(v).__name__}")
    if len(v) > max_bytes or (len(v) * 4 > max_bytes and len(v.encode("utf-8", "surrogatepass")) > max_bytes):
        raise DecodeError(f"{what}: longer than {max_bytes} bytes")
    if not allow_empty and not v:
        raise DecodeError(f"{what}: empty")
    return v


def _bin(v: Any, what: str, max_bytes: int) -> bytes:
    if not isinstance(v, bytes):
        raise DecodeError(f"{what}: expected bytes, got {type(v).__name__}")
    if len(v) > max_bytes:
        raise DecodeError(f"{what}: longer than {max_bytes} bytes")
    return v


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise DecodeError(f"{what}: expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise DecodeError(f"{what}: {v} outside {lo}..{hi}")
    return v


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise DecodeError(f"{what}: expected a boolean, got {type(v).__name__}")
    return v


def _list(v: Any, what: str, n: int | None = None) -> list[Any]:
    if not isinstance(v, list):
        raise DecodeError(f"{what}: expected an array, got {type(v).__name__}")
    if n is not None and len(v) != n:
        raise DecodeError(f"{what}: expected {n} elements, got {len(v)}")
    return v


def _fits(s: str, max_bytes: int) -> bool:
    return len(s) * 4 <= max_bytes or len(s.encode("utf-8", "surrogatepass")) <= max_bytes


def _entry(v: Any, lim: Limits) -> WireEntry:
    # Fast path for well-formed input (the common case, millions per bulk sync at scale); anything
    # unusual falls through to the field-by-field checks, which name the bad field.
    if type(v) is list and len(v) == 7:
        table, key, value, owner, ltime, flags, reap = v
        if (
            type(table) is str
            and type(key) is str
            and type(value) is bytes
            and type(owner) is str
            and type(ltime) is int
            and type(flags) is int
            and type(reap) is int
            and table
            and key
            and owner
            and 1 <= ltime <= MAX_LTIME
            and 0 <= flags <= 3
            and 0 <= reap <= _MAX_REAP_MS
            and len(value) <= lim.max_value_bytes
            and _fits(table, lim.max_table_bytes)
            and _fits(key, lim.max_key_bytes)
            and _fits(owner, lim.max_node_name_bytes)
        ):
            return WireEntry(table, key, value, owner, ltime, bool(flags & 1), bool(flags & 2), reap)
    f = _list(v, "entry", 7)
    flags = _int(f[5], "entry flags", 0, 3)
    return WireEntry(
        table=_str(f[0], "table", lim.max_table_bytes, allow_empty=False),
        key=_str(f[1], "key", lim.max_key_bytes, allow_empty=False),
        value=_bin(f[2], "value", lim.max_value_bytes),
        owner=_str(f[3], "owner", lim.max_node_name_bytes, allow_empty=False),
        ltime=_int(f[4], "ltime", 1, MAX_LTIME),
        deleted=bool(flags & 1),
        hidden=bool(flags & 2),
        reap_in_ms=_int(f[6], "reap_in_ms", 0, _MAX_REAP_MS),
    )


def _attachment(v: Any, lim: Limits) -> WireAttachment:
    f = _list(v, "attachment", 6)
    return WireAttachment(
        node=_str(f[0], "attachment node", lim.max_node_name_bytes, allow_empty=False),
        network=_str(f[1], "attachment network", lim.max_network_bytes),
        ltime=_int(f[2], "attachment ltime", 1, MAX_LTIME),
        leaving=_bool(f[3], "attachment leaving"),
        floor=_int(f[4], "attachment floor", 0, MAX_LTIME),
        reap_in_ms=_int(f[5], "attachment reap_in_ms", 0, _MAX_REAP_MS),
    )


def _attachments(v: Any, lim: Limits) -> tuple[WireAttachment, ...]:
    return tuple(_attachment(a, lim) for a in _list(v, "attachments"))


def _entries(v: Any, lim: Limits) -> tuple[WireEntry, ...]:
    return tuple(_entry(e, lim) for e in _list(v, "entries"))


#: ``skip(network)`` returns a predicate over the undecoded entries (msgpack lists, not validated) of a
#: ``TableEvents`` or a ``BulkSync`` section for ``network``, or None to decode them all. The predicate is True for an entry the
#: receiver already holds, which is then neither validated nor decoded; it must not raise for any input.
SkipEntry = Callable[[str], Callable[[Any], bool] | None]


def _body(kind: Kind, v: Any, lim: Limits, skip: SkipEntry | None = None) -> Body:
    if kind is Kind.TABLE_EVENTS:
        f = _list(v, "TableEvents", 2)
        network = _str(f[0], "network", lim.max_network_bytes)
        if skip is None:
            return TableEvents(network=network, entries=_entries(f[1], lim))
        held = skip(network)
        if held is None:
            return TableEvents(network=network, entries=_entries(f[1], lim))
        raws = _list(f[1], "entries")
        return TableEvents(network=network, entries=tuple(_entry(e, lim) for e in raws if not held(e)))
    if kind is Kind.ATTACHMENT_EVENTS:
        f = _list(v, "AttachmentEvents", 1)
        return AttachmentEvents(attachments=_attachments(f[0], lim))
    if kind is Kind.PUSH_PULL:
        f = _list(v, "PushPullState", 1)
        return PushPullState(attachments=_attachments(f[0], lim))
    if kind is Kind.BULK_SYNC:
        f = _list(v, "BulkSync", 9)
        parts = _int(f[3], "parts", 1, _MAX_PARTS)
        mode = _int(f[1], "mode", 0, 255)
        try:
            sync_mode = SyncMode(mode)
        except ValueError as exc:
            raise DecodeError(f"unknown bulk sync mode {mode}") from exc
        digests = []
        for d in _list(f[6], "digests"):
            df = _list(d, "digest", 2)
            digests.append(
                (_str(df[0], "digest network", lim.max_network_bytes), _int(df[1], "digest", 0, 2**64 - 1))
            )
        sections = []
        for s in _list(f[8], "sections"):
            sf = _list(s, "section", 2)
            network = _str(sf[0], "section network", lim.max_network_bytes)
            held = None if skip is None else skip(network)
            if held is None:
                sections.append((network, _entries(sf[1], lim)))
            else:
                raws = _list(sf[1], "entries")
                sections.append((network, tuple(_entry(e, lim) for e in raws if not held(e))))
        return BulkSync(
            sync_id=_int(f[0], "sync_id", 0, _MAX_ID),
            mode=sync_mode,
            part=_int(f[2], "part", 0, parts - 1),
            parts=parts,
            networks=tuple(_str(n, "network", lim.max_network_bytes) for n in _list(f[4], "networks")),
            attachments=_attachments(f[5], lim),
            digests=tuple(digests),
            want=tuple(_str(n, "want network", lim.max_network_bytes) for n in _list(f[7], "want")),
            sections=tuple(sections),
        )
    if kind is Kind.STATE_SYNC:
        f = _list(v, "StateSync", 5)
        parts = _int(f[3], "parts", 1, _MAX_PARTS)
        return StateSync(
            sync_id=_int(f[0], "sync_id", 0, _MAX_ID),
            is_reply=_bool(f[1], "is_reply"),
            part=_int(f[2], "part", 0, parts - 1),
            parts=parts,
            attachments=_attachments(f[4], lim),
        )
    if kind is Kind.REQUEST or kind is Kind.RESPONSE:
        f = _list(v, kind.name.title(), 2)
        rid = _int(f[0], "request_id", 0, _MAX_ID)
        payload = _bin(f[1], "payload", lim.max_request_bytes)
        return Request(rid, payload) if kind is Kind.REQUEST else Response(rid, payload)
    raise DecodeError(f"unknown message kind {kind!r}")  # pragma: no cover - Kind() already checked


def decode(data: bytes, limits: Limits | None = None, *, skip: SkipEntry | None = None) -> Envelope:
    """Decode one NetworkDB payload. Raises ``DecodeError`` (only) for anything malformed.

    ``skip`` filters the entries of a ``TableEvents`` before they are validated (see ``SkipEntry``):
    a receiver passes its "already have this version" check, so the many duplicate copies gossip
    delivers cost a type check and a dictionary lookup each instead of a full decode and merge."""
    lim = limits if limits is not None else Limits()
    if not is_networkdb(data):
        raise DecodeError("not a NetworkDB payload (missing 0x6e prefix)")
    if len(data) > lim.max_payload_bytes:
        raise DecodeError(f"payload of {len(data)} bytes exceeds {lim.max_payload_bytes}")
    try:
        top = msgpack.unpackb(
            memoryview(data)[1:],
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max(lim.max_key_bytes, lim.max_node_name_bytes, lim.max_table_bytes, 4096),
            max_bin_len=max(lim.max_value_bytes, lim.max_request_bytes),
            max_array_len=lim.max_payload_bytes,
            max_map_len=1024,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise DecodeError(f"bad msgpack: {exc}") from exc
    try:
        f = _list(top, "envelope", 5)
        version = _int(f[0], "version", 0, 255)
        if version != VERSION:
            raise DecodeError(f"unsupported NetworkDB wire version {version} (this node speaks {VERSION})")
        code = _int(f[1], "kind", 0, 255)
        try:
            kind = Kind(code)
        except ValueError as exc:
            raise DecodeError(f"unknown message kind {code}") from exc
        sender = _str(f[2], "sender", lim.max_node_name_bytes, allow_empty=False)
        cluster_id = _str(f[3], "cluster_id", _MAX_CLUSTER_ID)
        return Envelope(sender=sender, cluster_id=cluster_id, body=_body(kind, f[4], lim, skip))
    except DecodeError:
        raise
    except Exception as exc:  # defensive: validation must never leak another exception type
        raise DecodeError(f"malformed NetworkDB message: {exc}") from exc
