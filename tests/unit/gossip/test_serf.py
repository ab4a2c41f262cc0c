"""Serf compatibility pieces: tags, intents, push-pull user state, Lamport clocks (with real vectors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnet.core.errors import DecodeError
from meshnet.gossip import packet
from meshnet.gossip.serf import (
    JoinIntent,
    LamportClock,
    LeaveIntent,
    SerfPushPull,
    SerfState,
    decode_intent,
    decode_push_pull_state,
    decode_tags,
    encode_join_intent,
    encode_leave_intent,
    encode_push_pull_state,
    encode_tags,
)

CAPTURES = Path(__file__).resolve().parents[2] / "vectors" / "memberlist" / "captures"


def _capture(name: str) -> bytes:
    return (CAPTURES / name).read_bytes()


def test_tags_encode_sorted_and_decode_serf_bytes() -> None:
    assert encode_tags({}) == bytes.fromhex("ff80")
    assert encode_tags({"role": "web", "dc": "lab"}) == bytes.fromhex("ff82a26463a36c6162a4726f6c65a3776562")
    # serf wrote the same map in the other order (Go maps are unordered)
    assert decode_tags(bytes.fromhex("ff82a4726f6c65a3776562a26463a36c6162")) == {"role": "web", "dc": "lab"}
    assert decode_tags(b"web") == {"role": "web"}  # serf protocol < 3: a plain role string
    assert decode_tags(b"") == {} and decode_tags(None) == {}
    with pytest.raises(DecodeError):
        decode_tags(bytes.fromhex("ff01"))


def test_leave_intent_matches_serf_capture() -> None:
    (msg,) = packet.decode_datagram(_capture("plain_udp_023.bin"), keyring=None)  # crc(user:leave)
    assert decode_intent(msg.payload) == LeaveIntent(3, "beta", False)
    assert encode_leave_intent(3, "beta") == msg.payload


def test_join_intent_matches_serf_capture() -> None:
    (msg,) = packet.decode_datagram(_capture("plain_udp_002.bin"), keyring=None)  # crc(user:join)
    assert decode_intent(msg.payload) == JoinIntent(1, "beta")
    assert encode_join_intent(1, "beta") == msg.payload


def test_other_serf_messages_are_not_intents() -> None:
    assert decode_intent(b"\x03\x80") is None
    assert decode_intent(b"") is None
    with pytest.raises(DecodeError):
        decode_intent(b"\x00\x01")


def test_decode_serf_push_pull_state_with_512_events() -> None:
    pp = packet.decode_stream(_capture("plain_tcp_028.bin"), keyring=None)
    state = decode_push_pull_state(pp.user_state)
    assert state == SerfPushPull(
        ltime=2, status_ltimes={"alpha": 0, "beta": 1}, left_members=(), event_ltime=2, query_ltime=2
    )


def test_push_pull_state_round_trip() -> None:
    pp = SerfPushPull(
        ltime=7, status_ltimes={"b": 3, "a": 5}, left_members=("c",), event_ltime=2, query_ltime=4
    )
    data = encode_push_pull_state(pp)
    assert data[0] == 2
    assert decode_push_pull_state(data) == pp
    with pytest.raises(DecodeError):
        decode_push_pull_state(b"\x03" + data[1:])


def test_lamport_clock() -> None:
    c = LamportClock(1)
    c.witness(0)
    assert c.time() == 1
    c.witness(1)
    assert c.time() == 2
    c.witness(10)
    assert c.time() == 11
    assert c.increment() == 12


def test_leave_intent_ltime_beats_everything_seen_about_us() -> None:
    s = SerfState("me")
    s.merge_remote_state(encode_push_pull_state(SerfPushPull(ltime=9, status_ltimes={"me": 12, "x": 4})))
    assert s.status_ltimes == {"me": 12, "x": 4}
    assert s.clock.time() == 13  # witnessed 12 (LTime - 1 = 8 is older)
    intent = decode_intent(s.new_leave_intent())
    assert intent == LeaveIntent(13, "me", False)


def test_intents_are_news_once() -> None:
    s = SerfState("me")
    assert s.join_intent(JoinIntent(3, "a")) is True
    assert s.join_intent(JoinIntent(3, "a")) is False
    assert s.leave_intent(LeaveIntent(3, "a")) is False  # not newer than the join
    assert s.leave_intent(LeaveIntent(4, "a")) is True
    assert list(s.leaving) == ["a"]
    assert s.join_intent(JoinIntent(5, "a")) is True
    assert list(s.leaving) == []
    assert s.clock.time() == 6


def test_left_members_become_leave_intents_one_past_their_status_time() -> None:
    s = SerfState("me")
    s.join_intent(JoinIntent(4, "a"))
    s.merge_remote_state(
        encode_push_pull_state(SerfPushPull(ltime=5, status_ltimes={"a": 4}, left_members=("a",)))
    )
    assert s.status_ltimes["a"] == 5 and "a" in s.leaving


def test_local_state_lists_members_and_left_ones() -> None:
    s = SerfState("me")
    s.join_intent(JoinIntent(2, "a"))
    state = decode_push_pull_state(s.local_state(["a", "b", "me"], ["b"]))
    assert state == SerfPushPull(
        ltime=3, status_ltimes={"a": 2, "b": 0, "me": 0}, left_members=("b",), event_ltime=1, query_ltime=1
    )
