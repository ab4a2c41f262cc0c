"""Properties of the gossip wire codec: round trips through every layer, and fuzzing of the decoders.

- ``decode(encode(m)) == m`` for every message type, alone and through datagrams and streams with every
  combination of compression, CRC and a keyring of 1-3 keys of mixed sizes (the receiver holding the
  keys in another order);
- LZW round-trips arbitrary bytes;
- random bytes, truncations and bit flips of valid datagrams and streams raise nothing but
  ``DecodeError`` from ``decode_datagram``, ``decode_stream``, ``stream_frame_length`` and
  ``lzw.decompress``.
"""

from __future__ import annotations

import random
from contextlib import suppress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.core.errors import DecodeError
from meshnet.gossip import codec, lzw, packet
from meshnet.gossip.keyring import Keyring
from meshnet.gossip.messages import (
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPingReq,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u32 = st.integers(0, 2**32 - 1)
port = st.integers(0, 2**16 - 1)
name = st.text(max_size=40)
ip = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
opt_ip = st.one_of(st.just(b""), ip)
blob = st.binary(max_size=300)
vsn = st.one_of(st.just(bytes([1, 5, 2, 2, 5, 5])), st.binary(max_size=8))

pings = st.builds(Ping, seq_no=u32, node=name, source_addr=opt_ip, source_port=port, source_node=name)
indirect = st.builds(
    IndirectPingReq, seq_no=u32, target=ip, port=port, node=name, nack=st.booleans(),
    source_addr=opt_ip, source_port=port, source_node=name,
)  # fmt: skip
acks = st.builds(Ack, seq_no=u32, payload=st.one_of(st.none(), blob))
nacks = st.builds(Nack, seq_no=u32)
errs = st.builds(ErrResp, error=name)
suspects = st.builds(Suspect, incarnation=u32, node=name, from_node=name)
deads = st.builds(Dead, incarnation=u32, node=name, from_node=name)
alives = st.builds(
    Alive, incarnation=u32, node=name, addr=ip, port=port, meta=st.one_of(st.none(), blob), vsn=vsn
)
users = st.builds(UserMsg, payload=blob)
node_states = st.builds(
    PushNodeState, name=name, addr=ip, port=port, meta=st.one_of(st.none(), blob), incarnation=u32,
    state=st.integers(0, 3), vsn=vsn,
)  # fmt: skip
push_pulls = st.builds(
    PushPull, join=st.booleans(), states=st.lists(node_states, max_size=5).map(tuple), user_state=blob
)

datagram_messages = st.one_of(pings, indirect, acks, nacks, suspects, deads, alives, users)
stream_messages = st.one_of(pings, acks, errs, push_pulls, users)
all_messages = st.one_of(pings, indirect, acks, nacks, errs, suspects, deads, alives, users, push_pulls)

keys = st.lists(
    st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    min_size=1, max_size=3, unique=True,
)  # fmt: skip


@st.composite
def keyrings(draw: st.DrawFn) -> tuple[Keyring, Keyring] | None:
    """None, or (sender's keyring, receiver's keyring with the same keys in another order)."""
    if not draw(st.booleans()):
        return None
    ks = draw(keys)
    return Keyring(ks), Keyring(draw(st.permutations(ks)))


def encode_stream_message(m: object) -> bytes:
    if isinstance(m, UserMsg):
        return packet.encode_stream_user_msg(m.payload)
    return codec.encode_message(m)  # type: ignore[arg-type]


# --- round trips ---------------------------------------------------------------------------------------


@FAST
@given(all_messages)
def test_message_round_trip(m: object) -> None:
    assert codec.decode_message(codec.encode_message(m)) == m  # type: ignore[arg-type]


@FAST
@given(
    msgs=st.lists(datagram_messages, min_size=1, max_size=8),
    crc=st.booleans(),
    compress=st.booleans(),
    rings=keyrings(),
    seed=st.integers(0, 2**32),
)
def test_datagram_round_trip(msgs: list, crc: bool, compress: bool, rings: tuple | None, seed: int) -> None:
    sender, receiver = rings if rings else (None, None)
    parts = [codec.encode_message(m) for m in msgs]
    data = packet.encode_datagram(parts, crc=crc, compress=compress, keyring=sender, rng=random.Random(seed))
    assert packet.decode_datagram(data, keyring=receiver) == msgs
    if rings is None:
        assert packet.decode_datagram(data, keyring=None, verify_incoming=False) == msgs


@FAST
@given(m=stream_messages, compress=st.booleans(), rings=keyrings(), seed=st.integers(0, 2**32))
def test_stream_round_trip(m: object, compress: bool, rings: tuple | None, seed: int) -> None:
    sender, receiver = rings if rings else (None, None)
    frame = packet.encode_stream(
        encode_stream_message(m), compress=compress, keyring=sender, rng=random.Random(seed)
    )
    assert packet.stream_frame_length(frame, keyring=receiver) == len(frame)
    assert packet.stream_frame_length(frame + b"\x00trailing", keyring=receiver) == len(frame)
    assert packet.decode_stream(frame, keyring=receiver) == m


@settings(max_examples=40, deadline=None)
@given(m=stream_messages, compress=st.booleans(), rings=keyrings(), data=st.data())
def test_stream_prefixes_need_more(
    m: object, compress: bool, rings: tuple | None, data: st.DataObject
) -> None:
    sender, receiver = rings if rings else (None, None)
    frame = packet.encode_stream(
        encode_stream_message(m), compress=compress, keyring=sender, rng=random.Random(1)
    )
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert packet.stream_frame_length(frame[:cut], keyring=receiver) is None


@FAST
@given(st.binary(max_size=3000))
def test_lzw_round_trip(data: bytes) -> None:
    assert lzw.decompress(lzw.compress(data)) == data


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=40), st.integers(200, 3000))
def test_lzw_round_trip_across_resets(words: list[bytes], n: int) -> None:
    """Enough varied input to fill the 12-bit dictionary and force mid-stream clear codes."""
    rnd = random.Random(n)
    data = b"".join(rnd.choice(words) + rnd.randbytes(rnd.randint(0, 3)) for _ in range(n * 4))
    assert lzw.decompress(lzw.compress(data)) == data


# --- fuzz: only DecodeError may come out ----------------------------------------------------------------

RING = Keyring([bytes(range(16)), bytes(range(32))])


def only_decode_errors(data: bytes) -> None:
    for ring, verify in ((None, True), (RING, True), (RING, False)):
        with suppress(DecodeError):
            packet.decode_datagram(data, keyring=ring, verify_incoming=verify)
        with suppress(DecodeError):
            packet.decode_stream(data, keyring=ring, verify_incoming=verify)
        try:
            n = packet.stream_frame_length(data, keyring=ring)
            assert n is None or 0 < n <= len(data)
        except DecodeError:
            pass
    with suppress(DecodeError):
        lzw.decompress(data, max_size=1 << 16)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    only_decode_errors(data)


@FUZZ
@given(st.integers(0, 13).flatmap(lambda t: st.binary(max_size=200).map(lambda b: bytes([t]) + b)))
def test_fuzz_random_bodies_behind_each_type_byte(data: bytes) -> None:
    only_decode_errors(data)


@st.composite
def valid_wire(draw: st.DrawFn) -> bytes:
    """A valid datagram or stream frame, possibly compressed and sealed with ``RING``."""
    ring = RING if draw(st.booleans()) else None
    rng = random.Random(draw(st.integers(0, 2**32)))
    if draw(st.booleans()):
        msgs = draw(st.lists(datagram_messages, min_size=1, max_size=4))
        return packet.encode_datagram(
            [codec.encode_message(m) for m in msgs], crc=draw(st.booleans()), compress=draw(st.booleans()),
            keyring=ring, rng=rng,
        )  # fmt: skip
    m = draw(stream_messages)
    return packet.encode_stream(encode_stream_message(m), compress=draw(st.booleans()), keyring=ring, rng=rng)


@FUZZ
@given(valid_wire(), st.data())
def test_fuzz_truncations(wire: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(wire)))
    only_decode_errors(wire[:cut])
    only_decode_errors(wire[cut:])


@FUZZ
@given(valid_wire(), st.data())
def test_fuzz_bit_flips(wire: bytes, data: st.DataObject) -> None:
    buf = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= 1 << data.draw(st.integers(0, 7))
    only_decode_errors(bytes(buf))


@FUZZ
@given(st.binary(min_size=1, max_size=600), st.data())
def test_fuzz_lzw_streams(plain: bytes, data: st.DataObject) -> None:
    """Corrupted LZW (flips, cuts, appended junk) fails with DecodeError or decodes within the bound."""
    buf = bytearray(lzw.compress(plain))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= 1 << data.draw(st.integers(0, 7))
    buf = buf[: data.draw(st.integers(0, len(buf)))] + data.draw(st.binary(max_size=20))
    try:
        out = lzw.decompress(bytes(buf), max_size=4096)
    except DecodeError:
        return
    assert len(out) <= 4096


@FUZZ
@given(valid_wire(), st.data(), st.integers(0, 2**32))
def test_fuzz_sealed_garbage(wire: bytes, data: st.DataObject, seed: int) -> None:
    """Mangled plaintext sealed with a key we hold reaches the parsers behind decryption."""
    buf = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= 1 << data.draw(st.integers(0, 7))
    junk = bytes(buf[: data.draw(st.integers(1, len(buf)))])
    rng = random.Random(seed)
    with suppress(DecodeError):
        packet.decode_datagram(packet.encode_datagram([junk], crc=False, compress=False, keyring=RING, rng=rng),
                               keyring=RING)  # fmt: skip
    sealed = packet.encode_stream(junk, compress=False, keyring=RING, rng=rng)
    with suppress(DecodeError):
        packet.decode_stream(sealed, keyring=RING)
    assert packet.stream_frame_length(sealed, keyring=RING) == len(sealed)
