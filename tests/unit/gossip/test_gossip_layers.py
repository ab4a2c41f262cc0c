"""Behaviour of the outer gossip layers beyond the vectors: LZW bounds, keyring rules and file format,
packet layering rules (verify_incoming, nesting, what each transport accepts, size limits)."""

from __future__ import annotations

import base64
import json
import os
import random
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshnet.core.errors import ConfigError, DecodeError, LocalProtocolError
from meshnet.gossip import codec, lzw, packet
from meshnet.gossip.keyring import (
    Keyring,
    decrypt_payload,
    encrypt,
    encrypted_length,
    load_keyring_file,
    save_keyring_file,
)
from meshnet.gossip.messages import ErrResp, Nack, Ping, PushPull, Suspect, UserMsg

K16, K24, K32 = b"a" * 16, b"b" * 24, b"c" * 32
PING = codec.encode_message(Ping(seq_no=1, node="n"))
NACK = codec.encode_message(Nack(seq_no=2))


def rng() -> random.Random:
    return random.Random(1234)


# --- lzw -------------------------------------------------------------------------------------------------


def test_lzw_empty_input_is_clear_then_eof() -> None:
    assert lzw.compress(b"") == bytes([0x00, 0x03, 0x02])  # 256 and 257, 9 bits each, LSB first
    assert lzw.decompress(lzw.compress(b"")) == b""


def test_lzw_large_input_with_many_resets() -> None:
    data = random.Random(5).randbytes(60_000) + bytes(200_000) + b"abc" * 30_000
    assert lzw.decompress(lzw.compress(data)) == data


def test_lzw_rejects_missing_eof_and_invalid_codes() -> None:
    good = lzw.compress(b"hello hello hello")
    with pytest.raises(DecodeError, match="end code"):
        lzw.decompress(good[:-2])
    with pytest.raises(DecodeError, match="end code"):
        lzw.decompress(b"")
    # clear, then code 300 (never defined): 256 | 300 << 9
    with pytest.raises(DecodeError, match="invalid code"):
        lzw.decompress((256 | 300 << 9 | 257 << 18).to_bytes(4, "little"))


def test_lzw_accepts_stream_without_leading_clear_and_ignores_bytes_after_eof() -> None:
    # literal 'A', literal 'B', eof, 9 bits each
    raw = (65 | 66 << 9 | 257 << 18).to_bytes(4, "little")
    assert lzw.decompress(raw + b"\xff\xff") == b"AB"


def test_lzw_output_is_bounded() -> None:
    bomb = lzw.compress(bytes(5_000_000))
    assert len(bomb) < 20_000
    with pytest.raises(DecodeError, match="exceeds"):
        lzw.decompress(bomb, max_size=1_000_000)
    assert len(lzw.decompress(bomb, max_size=5_000_000)) == 5_000_000


def test_lzw_memos_return_what_the_codec_would_and_keep_the_size_bound() -> None:
    """packet's LZW memos: a hit gives the same bytes as the codec, an inflate hit still honours
    max_size, the memos stay within their byte budget, and they can be turned off."""
    try:
        packet.set_lzw_memo(4, 64 << 10)
        plain = b"alive node-0001 10.0.0.1 " * 200
        first = packet.encode_compress(plain)
        before = packet.lzw_memo_stats()
        assert packet.encode_compress(plain) == first  # a deflate hit
        assert packet.decode_compress(first, max_size=len(plain)) == plain  # filled by our deflate
        after = packet.lzw_memo_stats()
        assert after["deflate_hits"] == before["deflate_hits"] + 1
        assert after["inflate_hits"] == before["inflate_hits"] + 1
        assert first == bytes([9]) + codec.pack({"Algo": 0, "Buf": lzw.compress(plain)})
        with pytest.raises(DecodeError, match="exceeds"):
            packet.decode_compress(first, max_size=len(plain) - 1)
        for i in range(20):  # churn: at most 4 entries and 64 KiB stay
            packet.encode_compress(os.urandom(3000) + bytes([i]))
        memo = packet._DEFLATED
        assert len(memo.map) <= 4 and memo.size <= 64 << 10
        assert memo.size == sum(len(k) + len(v) for k, v in memo.map.items())
        packet.set_lzw_memo(0, 0)
        assert packet.encode_compress(plain) == first
        assert packet.decode_compress(first, max_size=len(plain)) == plain
        assert packet.lzw_memo_stats()["inflate_hits"] == 0
    finally:
        packet.set_lzw_memo(*packet.LZW_MEMO_DEFAULT)


# --- keyring ---------------------------------------------------------------------------------------------


def test_keyring_rules() -> None:
    ring = Keyring([K16, K24])
    assert ring.primary == K16 and ring.keys == (K16, K24)
    ring.install(K32)
    ring.install(K32)  # already there: no-op
    assert ring.keys == (K16, K24, K32)
    ring.use(K32)
    assert ring.keys == (K32, K16, K24)
    with pytest.raises(ConfigError, match="primary"):
        ring.remove(K32)
    ring.remove(K16)
    assert ring.keys == (K32, K24)
    with pytest.raises(ConfigError, match="not in the keyring"):
        ring.remove(K16)
    with pytest.raises(ConfigError, match="install it first"):
        ring.use(K16)
    with pytest.raises(ConfigError, match="16, 24 or 32"):
        ring.install(b"short")
    with pytest.raises(ConfigError, match="at least one key"):
        Keyring([])
    assert "a" not in repr(Keyring([K16]))


def test_decrypt_tries_every_key_and_reports_failures() -> None:
    sealed = encrypt(1, K24, b"payload", b"aad", bytes(12))
    assert len(sealed) == encrypted_length(1, 7)
    assert decrypt_payload(Keyring([K16, K32, K24]), sealed, b"aad") == b"payload"
    with pytest.raises(DecodeError, match="no installed key"):
        decrypt_payload(Keyring([K16, K32]), sealed, b"aad")
    with pytest.raises(DecodeError, match="no installed key"):
        decrypt_payload(Keyring([K24]), sealed, b"other aad")
    with pytest.raises(DecodeError, match="empty"):
        decrypt_payload(Keyring([K16]), b"", b"")
    with pytest.raises(DecodeError, match="version"):
        decrypt_payload(Keyring([K16]), b"\x02" + bytes(40), b"")
    with pytest.raises(DecodeError, match="too small"):
        decrypt_payload(Keyring([K16]), b"\x00" + bytes(40), b"")  # version 0 needs 45


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17])
def test_version_0_pads_to_blocks(size: int) -> None:
    sealed = encrypt(0, K16, bytes(size), b"", bytes(12))
    assert len(sealed) == encrypted_length(0, size) == 1 + 12 + (size // 16 + 1) * 16 + 16
    assert decrypt_payload(Keyring([K16]), sealed, b"") == bytes(size)


def test_version_0_bad_padding_is_a_decode_error() -> None:
    nonce = bytes(12)
    sealed = b"\x00" + nonce + AESGCM(K16).encrypt(nonce, bytes(16), None)  # last byte 0: no valid pad
    with pytest.raises(DecodeError, match="padding"):
        decrypt_payload(Keyring([K16]), sealed, b"")


def test_keyring_file_round_trip_in_serf_format(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    save_keyring_file(path, Keyring([K32, K16]))
    text = path.read_text()
    assert json.loads(text) == [base64.b64encode(K32).decode(), base64.b64encode(K16).decode()]
    assert text.startswith('[\n  "')  # Go's json.MarshalIndent(keys, "", "  ")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_keyring_file(path).keys == (K32, K16)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[]", "no keys present"),
        ("not json", "not valid JSON"),
        ('{"a": 1}', "JSON list of base64"),
        ('["%%%"]', "not valid standard base64"),
        (json.dumps([base64.b64encode(b"x" * 20).decode()]), "16, 24 or"),
    ],
)
def test_keyring_file_errors_say_the_fix(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "keyring"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        load_keyring_file(path)


def test_unreadable_keyring_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read keyring file"):
        load_keyring_file(tmp_path / "missing")


# --- datagrams -------------------------------------------------------------------------------------------


def test_compression_only_when_smaller() -> None:
    noise = codec.encode_message(UserMsg(payload=random.Random(1).randbytes(200)))
    assert packet.encode_datagram([noise], crc=False, compress=True, keyring=None, rng=rng()) == noise
    zeros = codec.encode_message(UserMsg(payload=bytes(200)))
    squeezed = packet.encode_datagram([zeros], crc=False, compress=True, keyring=None, rng=rng())
    assert squeezed[0] == 9 and len(squeezed) < len(zeros)


def test_encrypted_datagram_uses_primary_and_random_nonce() -> None:
    ring = Keyring([K16, K32])
    a = packet.encode_datagram([PING], crc=True, compress=False, keyring=ring, rng=random.Random(1))
    b = packet.encode_datagram([PING], crc=True, compress=False, keyring=ring, rng=random.Random(2))
    assert a != b and a[0] == 1 and len(a) == encrypted_length(1, len(PING) + 5)
    assert packet.decode_datagram(a, keyring=Keyring([K16])) == [Ping(seq_no=1, node="n")]
    with pytest.raises(DecodeError):
        packet.decode_datagram(a, keyring=Keyring([K32]))


def test_verify_incoming() -> None:
    ring = Keyring([K16])
    with pytest.raises(DecodeError):
        packet.decode_datagram(PING, keyring=ring)
    assert packet.decode_datagram(PING, keyring=ring, verify_incoming=False) == [Ping(seq_no=1, node="n")]
    sealed = packet.encode_datagram([PING], crc=False, compress=False, keyring=ring, rng=rng())
    with pytest.raises(DecodeError):
        packet.decode_datagram(sealed, keyring=None)


def test_nesting_is_unwrapped_up_to_the_limit() -> None:
    inner = codec.encode_compound([PING, packet.encode_compress(codec.encode_compound([NACK, PING]))])
    data = codec.encode_crc(packet.encode_compress(inner))
    ping, nack = Ping(seq_no=1, node="n"), Nack(seq_no=2)
    assert packet.decode_datagram(data, keyring=None) == [ping, nack, ping]
    deep = PING
    for _ in range(packet.MAX_NESTING):
        deep = codec.encode_compound([deep])
    assert packet.decode_datagram(deep, keyring=None) == [ping]
    with pytest.raises(DecodeError, match="nested"):
        packet.decode_datagram(codec.encode_compound([deep]), keyring=None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        codec.encode_compound([codec.encode_crc(PING)]),  # CRC is only a top-level wrapper
        codec.encode_message(PushPull(join=True)),  # stream only
        codec.encode_message(ErrResp(error="x")),  # errResp: stream only
        b"\xf4\x04lbl1" + PING,  # memberlist >= 0.3 label: serf 0.9.4 rejects it
        b"\x07\x00",  # empty compound
        b"\x07\x01\x00\x10" + PING[:3],  # the only part is truncated
        codec.encode_crc(PING)[:-1] + b"\x00",  # CRC mismatch
        b"\x09\x82\xa4Algo\x01\xa3Buf\xa0",  # unknown compression algorithm
    ],
)
def test_datagram_rejects(data: bytes) -> None:
    with pytest.raises(DecodeError):
        packet.decode_datagram(data, keyring=None)


def test_truncated_compound_keeps_parts_that_arrived() -> None:
    data = codec.encode_compound([PING, NACK])[:-1]
    assert packet.decode_datagram(data, keyring=None) == [Ping(seq_no=1, node="n")]


def test_datagram_decompression_is_bounded() -> None:
    bomb = packet.encode_compress(b"\x08" + bytes(packet.MAX_DATAGRAM_DECOMPRESSED))
    assert len(bomb) < 10_000
    with pytest.raises(DecodeError, match="exceeds"):
        packet.decode_datagram(bomb, keyring=None)


def test_encode_datagram_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        packet.encode_datagram([], crc=False, compress=False, keyring=None, rng=rng())
    with pytest.raises(LocalProtocolError, match="UDP maximum"):
        big = b"\x08" + random.Random(3).randbytes(70_000)
        packet.encode_datagram([big], crc=False, compress=True, keyring=None, rng=rng())


# --- streams ---------------------------------------------------------------------------------------------


def test_stream_rules() -> None:
    ring = Keyring([K16])
    sealed = packet.encode_stream(PING, compress=True, keyring=ring, rng=rng())
    assert packet.decode_stream(sealed, keyring=ring) == Ping(seq_no=1, node="n")
    with pytest.raises(DecodeError, match="not configured"):
        packet.decode_stream(sealed, keyring=None)
    with pytest.raises(DecodeError, match="not configured"):
        packet.stream_frame_length(sealed, keyring=None)
    with pytest.raises(DecodeError, match="not encrypted"):
        packet.decode_stream(PING, keyring=ring)
    assert packet.decode_stream(PING, keyring=ring, verify_incoming=False) == Ping(seq_no=1, node="n")
    # what a stream may carry
    with pytest.raises(DecodeError, match="not valid on a stream"):
        packet.decode_stream(
            codec.encode_message(Suspect(incarnation=1, node="a", from_node="b")), keyring=None
        )
    with pytest.raises(DecodeError):
        packet.stream_frame_length(codec.encode_compound([PING]), keyring=None)
    with pytest.raises(DecodeError):  # compress is one layer on streams
        packet.decode_stream(packet.encode_compress(packet.encode_compress(PING)), keyring=None)


def test_stream_frame_length_limits() -> None:
    ring = Keyring([K16])
    assert packet.stream_frame_length(b"", keyring=ring) is None
    assert packet.stream_frame_length(b"\x0a\x00\x00", keyring=ring) is None
    too_long = b"\x0a" + struct.pack(">I", packet.MAX_STREAM_FRAME + 1)
    with pytest.raises(DecodeError, match="exceeds"):
        packet.stream_frame_length(too_long, keyring=ring)
    with pytest.raises(DecodeError, match="exceeds"):
        packet.decode_stream(too_long + bytes(64), keyring=ring)
    # a plain frame whose msgpack claims a 4 GiB string, or 2**32 map entries
    with pytest.raises(DecodeError):
        packet.stream_frame_length(b"\x00\xdb\xff\xff\xff\xff", keyring=None)
    with pytest.raises(DecodeError):
        packet.stream_frame_length(b"\x00\xdf\xff\xff\xff\xff", keyring=None)
    # a push-pull whose user state is still arriving
    pp = codec.encode_message(PushPull(join=False, user_state=b"x" * 100))
    assert packet.stream_frame_length(pp[:-50], keyring=None) is None
    assert packet.stream_frame_length(pp, keyring=None) == len(pp)


# --- decoding shortcuts (memoized parts and node states, C skipping): same answers -------------------


def test_decoded_parts_carry_their_bytes_only_when_canonical() -> None:
    from meshnet.gossip.messages import Alive, Dead

    alive = codec.encode_message(Alive(incarnation=3, node="a", addr=b"\x7f\x00\x00\x01", port=7946))
    dead = codec.encode_message(Dead(incarnation=1, node="b", from_node="c"))
    # the same alive written the way a lenient encoder might (bin type for Addr): decodes equal,
    # but re-broadcasting it must re-encode canonically
    loose = b"\x04" + __import__("msgpack").packb(
        {"Addr": b"\x7f\x00\x00\x01", "Incarnation": 3, "Meta": b"", "Node": "a", "Port": 7946,
         "Vsn": bytes([1, 5, 2, 2, 5, 5])}, use_bin_type=True)  # fmt: skip
    for _ in range(2):  # the second round comes from the cache
        got = packet.decode_datagram_parts(codec.encode_compound([alive, dead, PING, loose]), keyring=None)
        assert [m for m, _ in got] == packet.decode_datagram(
            codec.encode_compound([alive, dead, PING, loose]), keyring=None
        )
        assert [r for _, r in got] == [alive, dead, None, None]
        assert got[0][0] == got[3][0]
    # a cached part is still rejected where it is not allowed, and garbage is never cached
    with pytest.raises(DecodeError):
        packet.decode_stream(alive, keyring=None)
    for _ in range(2):
        with pytest.raises(DecodeError):
            packet.decode_datagram(codec.encode_compound([alive, b"\x04\xc1"]), keyring=None)


def test_push_pull_decoding_is_the_same_from_the_state_cache() -> None:
    from meshnet.gossip.messages import PushNodeState

    states = tuple(
        PushNodeState(name=f"n{i}", addr=bytes([10, 0, 0, i]), port=7946, meta=b"\xff\x80" if i % 2 else None,
                      incarnation=i, state=i % 4)
        for i in range(20)
    )  # fmt: skip
    frame = codec.encode_message(PushPull(join=True, states=states, user_state=b"user"))
    first = codec.decode_push_pull(frame)
    again = codec.decode_push_pull(frame)
    assert first == again == PushPull(join=True, states=states, user_state=b"user")
    assert all(a is b for a, b in zip(first.states, again.states, strict=True))
    for cut in (len(frame) - 5, len(frame) // 2, 12):
        with pytest.raises(DecodeError):
            codec.decode_push_pull(frame[:cut])
    # states written by hand: a bad one is an error, also after good ones were cached
    bad = frame[:1] + codec.pack({"Join": False, "Nodes": 2, "UserStateLen": 0}) + codec.pack(
        {"Name": "x", "Port": 1}) + codec.pack([1, 2])  # fmt: skip
    with pytest.raises(DecodeError, match="pushNodeState"):
        codec.decode_push_pull(bad)


def test_fast_frame_length_agrees_with_the_walker() -> None:
    from meshnet.gossip.messages import PushNodeState

    r = random.Random(5)
    states = tuple(
        PushNodeState(name=f"node-{i}" * r.randint(1, 9), addr=bytes(16 if i % 3 else 4), port=i,
                      meta=bytes(r.randrange(256) for _ in range(r.randint(0, 300))), incarnation=r.getrandbits(32),
                      state=i % 4)
        for i in range(60)
    )  # fmt: skip
    frame = codec.encode_message(PushPull(join=False, states=states, user_state=b"u" * 70000))
    head_end = packet._skip_value(frame, 1)
    assert head_end is not None
    for cut in [len(frame), len(frame) - 1, *sorted(r.sample(range(1, len(frame)), 300))]:
        buf = frame[:cut]
        assert packet._skip_values_fast(buf, head_end, 60) == packet._skip_value(buf, head_end, 60)
        assert packet.stream_frame_length(buf, keyring=None) == (len(frame) if cut == len(frame) else None)
    mangled = bytearray(frame)
    second = packet._skip_value(frame, head_end)
    assert second is not None
    mangled[second] = 0xC1  # where the second state's map begins: never valid msgpack
    with pytest.raises(DecodeError):
        packet.stream_frame_length(bytes(mangled), keyring=None)
