"""Helpers for the runtime shell tests: bounded polling, started nodes, a fake core, raw HTTP."""

from __future__ import annotations

import functools
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from meshnet.core.errors import DecodeError
from meshnet.gossip import events as ev
from meshnet.runtime import Node


async def wait_until(
    pred: Callable[[], bool], timeout: float, what: str = "condition", interval: float = 0.02
) -> None:
    """Poll ``pred`` until true; fail with ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(interval)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@asynccontextmanager
async def running(node: Node, *, api_path: str | None = None) -> AsyncIterator[Node]:
    """Run ``node`` in a nursery for the block's duration; cancel it (a crash, not a leave) after."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(node.run, api_path=api_path))
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()


# -- a fake core that speaks a trivial protocol, to test the plumbing without SWIM --
#
# Datagram b"ping" -> the core answers b"pong" to the sender. Stream frames are a 4-byte big-endian
# length + payload; a first byte 0xFF is garbage (DecodeError). An inbound frame with payload b"echo"
# is answered with a framed b"ECHO"; the payload b"boom" makes receive_stream raise (a core bug).


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@dataclass(frozen=True)
class FakeStreamRequest:
    stream_id: int
    addr: tuple[str, int]
    data: bytes
    expect_reply: bool
    timeout: float


@dataclass
class FakeSwim:
    config: Any
    name: str
    addr: tuple[str, int]
    meta: bytes = b""
    now: float = 0.0
    tick_interval: float | None = None
    datagrams: list[tuple[tuple[str, int], bytes]] = field(default_factory=list)
    streams: list[FakeStreamRequest] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    received: list[tuple[tuple[str, int], bytes]] = field(default_factory=list)
    stream_inputs: list[tuple[tuple[str, int], bytes]] = field(default_factory=list)
    replies: dict[int, bytes] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)
    ticks: int = 0
    frame_length_calls: int = 0
    joins: list[list[tuple[str, int]]] = field(default_factory=list)
    left: bool = False
    _next_stream: int = 0
    _deadline: float | None = None

    def __post_init__(self) -> None:
        if self.tick_interval is not None:
            self._deadline = self.now + self.tick_interval

    # inputs
    def join(self, seeds: list[tuple[str, int]], *, now: float) -> None:
        self.joins.append(list(seeds))
        for seed in seeds:
            self.events.append(ev.JoinFailed(seed=seed, reason="fake core never joins"))

    def leave(self, *, now: float) -> None:
        self.left = True
        self.events.append(ev.LeaveCompleted(drained=True))

    def receive_datagram(self, src: tuple[str, int], data: bytes, *, now: float) -> None:
        self.received.append((src, data))
        if data == b"ping":
            self.datagrams.append((src, b"pong"))

    def stream_frame_length(self, buf: bytes) -> int | None:
        self.frame_length_calls += 1
        if buf[:1] == b"\xff":
            raise DecodeError("garbage stream")
        if len(buf) < 4:
            return None
        n = 4 + struct.unpack(">I", buf[:4])[0]
        return n if len(buf) >= n else None

    def receive_stream(self, src: tuple[str, int], data: bytes, *, now: float) -> bytes | None:
        self.stream_inputs.append((src, data))
        if data[4:] == b"boom":
            raise RuntimeError("fake core bug")
        return frame(b"ECHO") if data[4:].startswith(b"echo") else None

    def receive_stream_reply(self, stream_id: int, data: bytes, *, now: float) -> None:
        self.replies[stream_id] = data

    def stream_failed(self, stream_id: int, *, now: float) -> None:
        self.failed.append(stream_id)

    def handle_timer(self, *, now: float) -> None:
        self.ticks += 1
        self._deadline = now + self.tick_interval if self.tick_interval else None

    def open_stream(self, addr: tuple[str, int], data: bytes, *, expect_reply: bool, timeout: float) -> int:
        """Test hook: make the core ask for an outbound exchange (call through node._feed)."""
        self._next_stream += 1
        self.streams.append(FakeStreamRequest(self._next_stream, addr, data, expect_reply, timeout))
        return self._next_stream

    # outputs
    def datagrams_to_send(self) -> list[tuple[tuple[str, int], bytes]]:
        out, self.datagrams = self.datagrams, []
        return out

    def streams_to_open(self) -> list[FakeStreamRequest]:
        out, self.streams = self.streams, []
        return out

    def next_event(self) -> Any | None:
        return self.events.pop(0) if self.events else None

    def next_deadline(self) -> float | None:
        return self._deadline

    # reads
    def members(self) -> list[ev.Member]:
        me = ev.Member(
            self.name, self.addr[0], self.addr[1], self.meta, 1, "alive", b"\x01\x05\x02\x02\x05\x05", 0.0
        )
        other = ev.Member("peer-b", "127.0.0.99", 7946, b"\xff\x81\xa4role\xa3web", 3, "suspect", b"", 0.0)
        return [me, other]

    def stats(self) -> dict[str, int]:
        return {"fake_counter": 7}

    @property
    def health_score(self) -> int:
        return 0

    @property
    def is_left(self) -> bool:
        return self.left


def fake_factory(tick_interval: float | None = None) -> Callable[..., FakeSwim]:
    def make(
        config: Any, *, name: str, addr: tuple[str, int], meta: bytes, keyring: Any, rng: Any, now: float
    ) -> FakeSwim:
        return FakeSwim(config, name, addr, meta, now=now, tick_interval=tick_interval)

    return make


async def http_raw(path: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes to a unix-socket HTTP server, read until it closes."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        async with stream:
            if data:
                await stream.send_all(data)
            await stream.send_eof()
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body
