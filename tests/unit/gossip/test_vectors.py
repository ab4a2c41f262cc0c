"""The memberlist/serf wire vectors (tests/vectors/memberlist, see its README.md and PROVENANCE.md).

- Every ``go_golden.json`` entry is rebuilt from values by our encoders, byte for byte.
- Every capture decodes, with the keys of its set (primary first), into the fields its ``decoded`` shows.
- Every canonical capture re-encodes to the same bytes; encrypted ones are decrypted, the plaintext is
  compared with our re-encoding, and re-sealing it with the capture's own nonce gives the capture back.
- The plaintext packet sent to an encrypted agent is rejected; labelled packets (memberlist >= 0.3) are
  rejected as serf 0.9.4 rejects them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from meshnet.core.errors import DecodeError
from meshnet.gossip import codec, lzw, packet
from meshnet.gossip.keyring import Keyring, decrypt_payload, encrypt
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

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "memberlist"
GOLDEN = {e["Name"]: e for e in json.loads((VECTORS / "go_golden.json").read_text())}
INDEX = json.loads((VECTORS / "index.json").read_text())
KEYS = {name: base64.b64decode(k) for name, k in INDEX["keys"].items()}
CAPTURES = INDEX["vectors"]


class FixedNonce(random.Random):
    """An rng whose ``randbytes`` returns a given nonce (to reproduce a sealed vector)."""

    def __init__(self, nonce: bytes) -> None:
        super().__init__(0)
        self._nonce = nonce

    def randbytes(self, n: int) -> bytes:
        assert n == len(self._nonce)
        return self._nonce


def h(s: str) -> bytes:
    return bytes.fromhex(s)


# --- go_golden.json ------------------------------------------------------------------------------------

A = h("7f00000b")  # 127.0.0.11
B = h("7f00000c")  # 127.0.0.12
PING_FULL = Ping(seq_no=42, node="serf-a", source_addr=B, source_port=7946, source_node="py-b")
SUSPECT = Suspect(incarnation=3, node="serf-a", from_node="py-b")
ROLE_WEB = h("ff81a4726f6c65a3776562")  # serf tags {role: web}
STATES = (
    PushNodeState(name="serf-a", addr=A, port=7946, meta=ROLE_WEB, incarnation=1, state=0),
    PushNodeState(name="py-b", addr=B, port=7946, meta=None, incarnation=4, state=1),
)

GOLDEN_MESSAGES = {
    "ping_full": PING_FULL,
    "ping_minimal": Ping(seq_no=1, node="serf-a"),
    "ping_seq_large": Ping(seq_no=4_000_000_000),
    "indirect_ping_full": IndirectPingReq(
        seq_no=7,
        target=A,
        port=7946,
        node="serf-a",
        nack=True,
        source_addr=B,
        source_port=7946,
        source_node="py-b",
    ),
    "ack_nil_payload": Ack(seq_no=42, payload=None),
    "ack_empty_payload": Ack(seq_no=42, payload=b""),
    "ack_payload": Ack(seq_no=300, payload=b"\x01\x02\x03"),
    "nack": Nack(seq_no=7),
    "err": ErrResp(error="boom"),
    "suspect": SUSPECT,
    "alive": Alive(incarnation=1, node="serf-a", addr=A, port=7946, meta=ROLE_WEB),
    "alive_nil_meta": Alive(incarnation=2, node="n", addr=A, port=7946, meta=None),
    "dead": Dead(incarnation=1, node="serf-a", from_node="py-b"),
    "dead_left": Dead(incarnation=1, node="py-b", from_node="py-b"),
    "user_packet": UserMsg(payload=h("0182a54c54696d6505a44e6f6465a470792d62")),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_MESSAGES))
def test_golden_message(name: str) -> None:
    msg = GOLDEN_MESSAGES[name]
    want = h(GOLDEN[name]["Hex"])
    assert codec.encode_message(msg) == want
    assert (
        packet.encode_datagram([want], crc=False, compress=False, keyring=None, rng=random.Random(0)) == want
    )
    if isinstance(msg, ErrResp):  # stream only
        assert packet.decode_stream(want, keyring=None) == msg
    else:
        assert packet.decode_datagram(want, keyring=None) == [msg]


def _compound() -> list[bytes]:
    return [codec.encode_message(PING_FULL), codec.encode_message(SUSPECT)]


def test_golden_compound_and_crc() -> None:
    rng = random.Random(0)
    want = h(GOLDEN["compound_ping_suspect"]["Hex"])
    assert codec.encode_compound(_compound()) == want
    assert packet.encode_datagram(_compound(), crc=False, compress=False, keyring=None, rng=rng) == want
    crc = h(GOLDEN["crc_compound"]["Hex"])
    assert codec.encode_crc(want) == crc
    assert packet.encode_datagram(_compound(), crc=True, compress=False, keyring=None, rng=rng) == crc
    # Compression would not make this packet smaller, so it stays uncompressed even when enabled.
    assert packet.encode_datagram(_compound(), crc=True, compress=True, keyring=None, rng=rng) == crc
    for data in (want, crc):
        assert packet.decode_datagram(data, keyring=None) == [PING_FULL, SUSPECT]


def test_golden_compress_ack() -> None:
    want = h(GOLDEN["compress_ack"]["Hex"])
    ack = codec.encode_message(Ack(seq_no=9, payload=bytes(64)))
    assert packet.encode_compress(ack) == want
    assert packet.encode_datagram([ack], crc=False, compress=True, keyring=None, rng=random.Random(0)) == want
    assert packet.decode_datagram(want, keyring=None) == [Ack(seq_no=9, payload=bytes(64))]


def test_golden_compress_big() -> None:
    entry = GOLDEN["compress_big"]
    plain, want = h(entry["Plaintext"]), h(entry["Hex"])
    assert packet.encode_compress(plain) == want
    body, _ = codec.unpack_one(want, 1)
    assert lzw.compress(plain) == body[b"Buf"]
    assert lzw.decompress(body[b"Buf"]) == plain
    assert packet.decode_datagram(want, keyring=None) == [UserMsg(payload=plain[1:])]


def test_golden_stream_user_msg() -> None:
    want = h(GOLDEN["stream_user_msg"]["Hex"])
    assert packet.encode_stream_user_msg(b"hello") == want
    assert packet.encode_stream(want, compress=False, keyring=None, rng=random.Random(0)) == want
    assert packet.stream_frame_length(want, keyring=None) == len(want)
    assert packet.decode_stream(want, keyring=None) == UserMsg(payload=b"hello")


@pytest.mark.parametrize("name", sorted(n for n in GOLDEN if n.startswith("encrypt_")))
def test_golden_encrypt(name: str) -> None:
    entry = GOLDEN[name]
    want, key, plain = h(entry["Hex"]), h(entry["KeyHex"]), h(entry["Plaintext"])
    vsn, nonce = want[0], want[1:13]
    assert vsn == int(name[len("encrypt_v")])
    assert plain == codec.encode_compound(_compound())
    assert encrypt(vsn, key, plain, b"", nonce) == want
    other = bytes(len(key))
    assert decrypt_payload(Keyring([other, key]), want, b"") == plain
    assert packet.decode_datagram(want, keyring=Keyring([other, key])) == [PING_FULL, SUSPECT]
    if vsn == 1:  # what our senders produce
        ring = Keyring([key, other])
        got = packet.encode_datagram(
            _compound(), crc=False, compress=False, keyring=ring, rng=FixedNonce(nonce)
        )
        assert got == want


@pytest.mark.parametrize(
    ("name", "join", "compress"),
    [
        ("stream_pushpull_join_plain", True, False),
        ("stream_pushpull_plain_nojoin", False, False),
        ("stream_pushpull_compressed", True, True),
    ],
)
def test_golden_push_pull_stream(name: str, join: bool, compress: bool) -> None:
    want = h(GOLDEN[name]["Hex"])
    pp = PushPull(join=join, states=STATES, user_state=b"\x02\x80")
    frame = codec.encode_message(pp)
    assert packet.encode_stream(frame, compress=compress, keyring=None, rng=random.Random(0)) == want
    assert packet.stream_frame_length(want, keyring=None) == len(want)
    assert packet.stream_frame_length(want[:-1], keyring=None) is None
    assert packet.decode_stream(want, keyring=None) == pp


def test_golden_push_pull_encrypted() -> None:
    entry = GOLDEN["stream_pushpull_encrypted"]
    want, ring = h(entry["Hex"]), Keyring([h(entry["KeyHex"])])
    assert want[:5] == h(entry["AADHex"])
    pp = PushPull(join=True, states=STATES, user_state=b"\x02\x80")
    got = packet.encode_stream(
        codec.encode_message(pp), compress=True, keyring=ring, rng=FixedNonce(want[6:18])
    )
    assert got == want
    assert packet.stream_frame_length(want + b"next", keyring=ring) == len(want)
    assert packet.stream_frame_length(want[:-1], keyring=ring) is None
    assert packet.decode_stream(want, keyring=ring) == pp
    assert decrypt_payload(ring, want[5:], want[:5]) == h(GOLDEN["stream_pushpull_compressed"]["Hex"])


def test_every_golden_entry_is_covered() -> None:
    covered = set(GOLDEN_MESSAGES) | {
        "compound_ping_suspect",
        "crc_compound",
        "compress_ack",
        "compress_big",
        "stream_user_msg",
        "stream_pushpull_join_plain",
        "stream_pushpull_plain_nojoin",
        "stream_pushpull_compressed",
        "stream_pushpull_encrypted",
    }
    covered |= {n for n in GOLDEN if n.startswith("encrypt_v")}
    assert covered == set(GOLDEN)


# --- captures: field comparison ------------------------------------------------------------------------

GO_FIELDS: dict[type, dict[str, str]] = {
    Ping: {"SeqNo": "seq_no", "Node": "node", "SourceAddr": "source_addr", "SourcePort": "source_port",
           "SourceNode": "source_node"},
    IndirectPingReq: {"SeqNo": "seq_no", "Target": "target", "Port": "port", "Node": "node", "Nack": "nack",
                      "SourceAddr": "source_addr", "SourcePort": "source_port", "SourceNode": "source_node"},
    Ack: {"SeqNo": "seq_no", "Payload": "payload"},
    Nack: {"SeqNo": "seq_no"},
    ErrResp: {"Error": "error"},
    Suspect: {"Incarnation": "incarnation", "Node": "node", "From": "from_node"},
    Dead: {"Incarnation": "incarnation", "Node": "node", "From": "from_node"},
    Alive: {"Incarnation": "incarnation", "Node": "node", "Addr": "addr", "Port": "port", "Meta": "meta",
            "Vsn": "vsn"},
    PushNodeState: {"Name": "name", "Addr": "addr", "Port": "port", "Meta": "meta", "Incarnation": "incarnation",
                    "State": "state", "Vsn": "vsn"},
}  # fmt: skip
LEAF_TYPES = {"ping": Ping, "indirectPing": IndirectPingReq, "ack": Ack, "nack": Nack, "err": ErrResp,
              "suspect": Suspect, "dead": Dead, "alive": Alive, "user": UserMsg, "pushPull": PushPull}  # fmt: skip


def match(exp: Any, act: Any, where: str) -> None:
    """Assert that the JSON description ``exp`` (index.json style) describes the Python value ``act``."""
    if isinstance(exp, dict) and "hex" in exp:
        assert isinstance(act, bytes), where
        assert act.hex() == exp["hex"], where
        if "ip" in exp:
            assert str(ipaddress.ip_address(act)) == exp["ip"], where
    elif isinstance(exp, str):
        m = re.fullmatch(r"\[null x (\d+)\]", exp)  # the index abbreviates long nil arrays
        if m:
            assert act == [None] * int(m.group(1)), where
        else:
            assert (act.decode() if isinstance(act, bytes) else act) == exp, where
    elif exp is None or isinstance(exp, bool):
        assert act is exp, where
    elif isinstance(exp, (int, float)):
        assert not isinstance(act, bool) and act == exp, where
    elif isinstance(exp, list):
        if isinstance(act, bytes):
            act = list(act)
        assert isinstance(act, (list, tuple)) and len(act) == len(exp), where
        for i, (e, a) in enumerate(zip(exp, act)):
            match(e, a, f"{where}[{i}]")
    elif isinstance(exp, dict):
        assert isinstance(act, dict), where
        got = {k.decode() if isinstance(k, bytes) else k: v for k, v in act.items()}
        assert set(got) == set(exp), where
        for k, v in exp.items():
            match(v, got[k], f"{where}.{k}")
    else:
        raise AssertionError(f"{where}: unexpected description {exp!r}")


def match_struct(exp_body: dict, obj: Any, where: str) -> None:
    """Compare a Go struct's described fields with our dataclass; absent fields must be zero."""
    fields = GO_FIELDS[type(obj)]
    for go, py in fields.items():
        if go in exp_body:
            match(exp_body[go], getattr(obj, py), f"{where}.{go}")
        else:
            assert getattr(obj, py) in (0, "", b"", None, False), f"{where}.{go} should be empty"
    unknown = {k for k in exp_body if not k.startswith("_")} - set(fields)
    assert not unknown, f"{where}: fields we do not model: {unknown}"


def serf_tags(meta: bytes | None) -> dict[str, str]:
    assert meta and meta[0] == 0xFF, "serf meta starts with 0xff"
    return msgpack.unpackb(meta[1:], raw=False)


def match_serf(exp: dict, payload: bytes, where: str) -> None:
    assert payload[0] == exp["serf_type"], where
    body, _ = codec.unpack_one(payload, 1)
    match(exp["body"], body, f"{where}.serf")


def match_leaf(exp: dict, msg: Any, where: str) -> None:
    where = f"{where}:{exp['name']}"
    assert isinstance(msg, LEAF_TYPES[exp["name"]]), f"{where}: got {type(msg).__name__}"
    if isinstance(msg, UserMsg):
        match_serf(exp["serf"], msg.payload, where)
    elif isinstance(msg, PushPull):
        head = exp["header"]
        assert msg.join is head["Join"], where
        assert len(msg.states) == head["Nodes"] == len(exp["nodes"]), where
        assert len(msg.user_state) == head["UserStateLen"] == exp["user_state_len"], where
        for i, (node, state) in enumerate(zip(exp["nodes"], msg.states)):
            match_struct(node, state, f"{where}.nodes[{i}]")
            if "_serf_tags" in node:
                assert serf_tags(state.meta) == node["_serf_tags"], where
        if "user_state" in exp:
            match_serf(exp["user_state"], msg.user_state, f"{where}.user_state")
    else:
        match_struct(exp["body"], msg, where)
        if "serf_tags" in exp:
            assert serf_tags(msg.meta) == exp["serf_tags"], where


def leaves(node: dict) -> Iterator[dict]:
    """The message descriptions of a decoded tree, in wire order (framings flattened)."""
    name = node["name"]
    if name == "hasCrc":
        assert node["crc_ok"]
        yield from leaves(node["inner"])
    elif name == "compress":
        yield from leaves(node["inner"])
    elif name == "compound":
        assert node["count"] == len(node["parts"])
        for part in node["parts"]:
            yield from leaves(part)
    else:
        yield node


def layers(node: dict) -> tuple[bool, bool, list[dict]]:
    """Split a decoded UDP tree into (crc, compressed, leaves) for encode_datagram's template."""
    crc = node["name"] == "hasCrc"
    if crc:
        node = node["inner"]
    compressed = node["name"] == "compress"
    if compressed:
        node = node["inner"]
    parts = node["parts"] if node["name"] == "compound" else [node]
    assert all(p["name"] not in ("hasCrc", "compress", "compound") for p in parts), "deeper nesting"
    return crc, compressed, parts


def set_keyring(vec: dict) -> Keyring | None:
    names = vec["keys"] or (
        [k for k in KEYS if k.startswith(vec["set"] + "_")] if vec.get("expect_decrypt_error") else []
    )
    return Keyring([KEYS[n] for n in names]) if names else None


def key_that_opens(vec: dict, sealed: bytes, aad: bytes) -> bytes:
    for name in vec["keys"]:
        try:
            decrypt_payload(Keyring([KEYS[name]]), sealed, aad)
        except DecodeError:
            continue
        return KEYS[name]
    raise AssertionError("no key of the set opens it")


def strip_label(data: bytes) -> tuple[bytes, bytes]:
    assert data[0] == 244
    return data[: 2 + data[1]], data[2 + data[1] :]


def _id(vec: dict) -> str:
    return Path(vec["file"]).stem


UDP = [v for v in CAPTURES if v["transport"] == "udp"]
TCP = [v for v in CAPTURES if v["transport"] == "tcp"]


@pytest.mark.parametrize("vec", UDP, ids=_id)
def test_udp_capture(vec: dict) -> None:
    data = (VECTORS / vec["file"]).read_bytes()
    assert len(data) == vec["len"]
    desc = vec["decoded"]
    ring = set_keyring(vec)
    label = b""
    if "label" in desc:  # memberlist >= 0.3 framing: serf 0.9.4 rejects it, and so do we
        with pytest.raises(DecodeError):
            packet.decode_datagram(data, keyring=ring)
        label, data = strip_label(data)
        assert label[2:].decode() == desc["label"]
    if vec.get("expect_decrypt_error"):
        assert ring is not None
        with pytest.raises(DecodeError):
            packet.decode_datagram(data, keyring=ring)
        msgs = packet.decode_datagram(data, keyring=ring, verify_incoming=False)
    else:
        msgs = packet.decode_datagram(data, keyring=ring)
    exp_leaves = list(leaves(desc["msg"]))
    assert len(msgs) == len(exp_leaves)
    for i, (e, m) in enumerate(zip(exp_leaves, msgs)):
        match_leaf(e, m, f"part[{i}]")

    if vec.get("canonical") is False:
        return
    crc, compressed, _ = layers(desc["msg"])
    parts = [codec.encode_message(m) for m in msgs]
    plain = packet.encode_datagram(parts, crc=crc, compress=compressed, keyring=None, rng=random.Random(0))
    if not vec["encrypted"]:
        assert label + plain == (VECTORS / vec["file"]).read_bytes()
        return
    assert data[0] == desc["encryption_version"] and len(data) == desc["wire_len"]
    key = key_that_opens(vec, data, b"")
    assert decrypt_payload(Keyring([KEYS[n] for n in vec["keys"]]), data, b"") == plain
    nonce = data[1:13]
    assert encrypt(data[0], key, plain, b"", nonce) == data
    if data[0] == 1:
        again = packet.encode_datagram(
            parts, crc=crc, compress=compressed, keyring=Keyring([key]), rng=FixedNonce(nonce)
        )
        assert again == data


@pytest.mark.parametrize("vec", TCP, ids=_id)
def test_tcp_capture(vec: dict) -> None:
    data = (VECTORS / vec["file"]).read_bytes()
    assert len(data) == vec["len"]
    (desc,) = vec["decoded"]
    ring = set_keyring(vec)
    label = b""
    if "label" in desc:
        with pytest.raises(DecodeError):
            packet.stream_frame_length(data, keyring=ring)
        with pytest.raises(DecodeError):
            packet.decode_stream(data, keyring=ring)
        label, data = strip_label(data)
        assert label[2:].decode() == desc["label"]
    assert packet.stream_frame_length(data, keyring=ring) == len(data) == desc["consumed"] - len(label)
    assert packet.stream_frame_length(data[:-1], keyring=ring) is None
    msg = packet.decode_stream(data, keyring=ring)
    frame = desc["inner"] if desc["name"] == "compress" else desc
    match_leaf(frame, msg, "stream")
    if ring is not None:
        assert data[0] == 10
        (length,) = struct.unpack_from(">I", data, 1)
        assert length == desc["encrypted_len"] and data[5] == desc["encryption_version"]
    else:  # a plaintext stream is rejected by a node that has a keyring
        with pytest.raises(DecodeError):
            packet.decode_stream(data, keyring=Keyring([bytes(16)]))

    if vec.get("canonical") is False:
        return
    compressed = desc["name"] == "compress"
    plain = packet.encode_stream(
        codec.encode_message(msg), compress=compressed, keyring=None, rng=random.Random(0)
    )
    if ring is None:
        assert plain == data
        return
    header = data[:5]
    key = key_that_opens(vec, data[5:], header)
    assert decrypt_payload(ring, data[5:], header) == plain
    again = packet.encode_stream(
        codec.encode_message(msg), compress=compressed, keyring=Keyring([key]), rng=FixedNonce(data[6:18])
    )
    assert again == data


def test_plaintext_push_pull_to_encrypted_node_is_rejected() -> None:
    """misc_tcp_004 was sent in clear to an encrypted agent, which answered with misc_tcp_005's error."""
    data = (VECTORS / "captures" / "misc_tcp_004.bin").read_bytes()
    ring = Keyring([KEYS["misc_KEY"]])
    with pytest.raises(DecodeError, match="not encrypted"):
        packet.decode_stream(data, keyring=ring)
    assert isinstance(packet.decode_stream(data, keyring=ring, verify_incoming=False), PushPull)
    reply = (VECTORS / "captures" / "misc_tcp_005.bin").read_bytes()
    err = packet.decode_stream(reply, keyring=ring)
    assert err == ErrResp(error="Encryption is configured but remote state is not encrypted")


def test_key_rotation_set_uses_both_keys() -> None:
    """The ``enc`` set spans `serf keys -install/-use`: both keys must actually be needed."""
    used = set()
    for vec in CAPTURES:
        if vec["set"] == "enc" and vec["transport"] == "udp":
            data = (VECTORS / vec["file"]).read_bytes()
            used.add(key_that_opens(vec, data, b""))
    assert used == {KEYS["enc_K1"], KEYS["enc_K2"]}
