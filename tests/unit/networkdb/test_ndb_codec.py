"""NetworkDB wire codec: exact bytes, round trips, limits, splitting, and refusals."""

from __future__ import annotations

import msgpack
import pytest

from meshnet.core.errors import DecodeError
from meshnet.networkdb import codec
from meshnet.networkdb.messages import (
    AttachmentEvents,
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

W = WireEntry("t", "k", b"v", "a", 2, deleted=True, hidden=False, reap_in_ms=1500)
A = WireAttachment("a", "net", 3, leaving=True, floor=1, reap_in_ms=20)

BODIES = [
    TableEvents("net", (W, WireEntry("t", "k2", b"", "b", 9, hidden=True))),
    AttachmentEvents((A,)),
    PushPullState((A, WireAttachment("b", "", 1))),
    BulkSync(
        7,
        SyncMode.REPLY,
        0,
        1,
        ("net", ""),
        (A,),
        (("net", 2**64 - 1), ("", 0)),
        ("net",),
        (("net", (W,)), ("", ())),
    ),
    StateSync(8, False, 0, 1, (A,)),
    Request(2**40, b"ask"),
    Response(0, b""),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_round_trip(body):
    env = Envelope("sender", "cid", body)
    data = codec.encode(env)
    assert data[0] == 0x6E and codec.is_networkdb(data)
    assert codec.decode(data) == env


def test_golden_table_events():
    env = Envelope("a", "", TableEvents("n", (WireEntry("t", "k", b"v", "a", 1),)))
    # 6e | [1, 1, "a", "", ["n", [["t", "k", b"v", "a", 1, 0, 0]]]]
    assert codec.encode(env).hex() == "6e950101a161a092a16e9197a174a16bc40176a161010000"


def test_raw_table_events_equal_plain_encoding():
    entries = (W, WireEntry("t", "k2", b"x" * 300, "b", 9))
    raw = codec.encode_table_events_raw("s", "c", "net", [codec.encode_wire_entry(w) for w in entries])
    assert raw == codec.encode(Envelope("s", "c", TableEvents("net", entries)))
    overhead = codec.table_events_overhead("s", "c", "net")
    assert len(raw) <= overhead + sum(len(codec.encode_wire_entry(w)) for w in entries)


def test_raw_table_events_with_many_entries_uses_wide_header():
    entries = tuple(WireEntry("t", f"k{i}", b"", "a", i + 1) for i in range(20))
    raw = codec.encode_table_events_raw("s", "", "n", [codec.encode_wire_entry(w) for w in entries])
    assert codec.decode(raw).body.entries == entries


def test_bulk_sync_split_in_parts_carries_everything():
    atts = [WireAttachment(f"n{i}", "net", i + 1) for i in range(40)]
    entries = [WireEntry("t", f"k{i}", b"x" * 500, "a", i + 1) for i in range(300)]
    parts = codec.encode_bulk_sync(
        "s",
        "c",
        sync_id=5,
        mode=SyncMode.PUSH,
        networks=["net", "e"],
        attachments=atts,
        want=["net", "e"],
        sections=[("e", []), ("net", entries)],
        max_bytes=64 * 1024,
    )
    assert len(parts) == 3
    assert all(len(p) <= 64 * 1024 for p in parts)
    decoded = [codec.decode(p, codec.Limits(max_message_bytes=64 * 1024)).body for p in parts]
    assert [d.part for d in decoded] == [0, 1, 2] and {d.parts for d in decoded} == {3}
    assert all(d.networks == ("net", "e") and d.want == ("net", "e") and d.sync_id == 5 for d in decoded)
    assert [a for d in decoded for a in d.attachments] == atts
    assert [w for d in decoded for net, ws in d.sections if net == "net" for w in ws] == entries
    assert ("e", ()) in decoded[0].sections


def test_single_part_bulk_sync_equals_plain_encoding():
    body = BulkSync(7, SyncMode.REQUEST, 0, 1, ("net",), (A,), (("net", 12345),), ("net",), (("net", (W,)),))
    raw = codec.encode_bulk_sync(
        "s",
        "c",
        sync_id=7,
        mode=SyncMode.REQUEST,
        networks=["net"],
        attachments=[A],
        digests=[("net", 12345)],
        want=["net"],
        sections=[("net", [W])],
        max_bytes=1 << 20,
    )
    assert raw == [codec.encode(Envelope("s", "c", body))]


def test_state_sync_split():
    atts = [WireAttachment(f"node-{i:05d}", "network-name", i + 1) for i in range(5000)]
    parts = codec.encode_state_sync("s", "", sync_id=1, is_reply=True, attachments=atts, max_bytes=64 * 1024)
    assert len(parts) > 1
    got = [codec.decode(p).body for p in parts]
    assert [a for b in got for a in b.attachments] == atts and got[-1].part == len(parts) - 1


def _env_bytes(*fields):
    return b"\x6e" + msgpack.packb(list(fields), use_bin_type=True)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "prefix"),
        (b"\x01abc", "prefix"),
        (b"\x6e", "msgpack"),
        (b"\x6e\xc1", "msgpack"),
        (_env_bytes(2, 1, "a", "", ["n", []]), "version 2"),
        (_env_bytes(1, 99, "a", "", []), "kind 99"),
        (_env_bytes(1, 1, "", "", ["n", []]), "sender"),
        (_env_bytes(1, 1, "a", "", ["n"]), "TableEvents"),
        (_env_bytes(1, 1, "a", "", ["n", [["t", "k", "str-not-bin", "a", 1, 0, 0]]]), "value"),
        (_env_bytes(1, 1, "a", "", ["n", [["t", "k", b"", "a", 0, 0, 0]]]), "ltime"),
        (_env_bytes(1, 1, "a", "", ["n", [["t", "k", b"", "a", 2**62 + 1, 0, 0]]]), "ltime"),
        (_env_bytes(1, 1, "a", "", ["n", [["t", "k", b"", "a", 1, 4, 0]]]), "flags"),
        (_env_bytes(1, 1, "a", "", ["n", [["t", "", b"", "a", 1, 0, 0]]]), "key"),
        (_env_bytes(1, 1, "a", "", ["n", [["t", "k" * 513, b"", "a", 1, 0, 0]]]), "key"),
        (_env_bytes(1, 2, "a", "", [[["a", "n", 1, "yes", 0, 0]]]), "leaving"),
        (_env_bytes(1, 3, "a", "", [1, 0, 1, 1, [], [], [], [], []]), "part"),
        (_env_bytes(1, 3, "a", "", [1, 9, 0, 1, [], [], [], [], []]), "mode"),
        (_env_bytes(1, 3, "a", "", [1, 0, 0, 1, [], [], [["n", -1]], [], []]), "digest"),
        (_env_bytes(1, 5, "a", "", [True, b""]), "request_id"),
        (_env_bytes(1, 1, "a", "x" * 65, ["n", []]), "cluster_id"),
        (_env_bytes(1, 1, "a", "", {"n": 1}), "TableEvents"),
        (b"\x6e" + msgpack.packb([1, 1, "a", "", ["n", []]]) + b"\x00", "msgpack"),
        (b"\x6e" + msgpack.packb(msgpack.ExtType(1, b"x")), "msgpack"),
    ],
)
def test_garbage_is_decode_error(data, reason):
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert reason.split()[0].lower() in str(info.value).lower()


def test_value_size_limit():
    env = Envelope("a", "", TableEvents("n", (WireEntry("t", "k", b"x" * 101, "a", 1),)))
    with pytest.raises(DecodeError, match="value"):
        codec.decode(codec.encode(env), codec.Limits(max_value_bytes=100))


def test_payload_size_limit():
    lim = codec.Limits(max_message_bytes=64 * 1024)
    env = Envelope("a", "", Request(1, b"x" * (lim.max_payload_bytes + 1)))
    with pytest.raises(DecodeError, match="exceeds"):
        codec.decode(codec.encode(env), lim)


def test_kind_codes_are_append_only():
    assert [(k.name, k.value) for k in Kind] == [
        ("TABLE_EVENTS", 1),
        ("ATTACHMENT_EVENTS", 2),
        ("BULK_SYNC", 3),
        ("STATE_SYNC", 4),
        ("REQUEST", 5),
        ("RESPONSE", 6),
        ("PUSH_PULL", 7),
    ]
