"""The shell's plumbing against a fake core: one port for UDP and TCP, frames, failures, the timer.

Real loopback sockets on 127.0.0.x with ephemeral ports; real time (sockets do not run on a virtual
clock), every wait bounded.
"""

from __future__ import annotations

import functools

import trio
import trio.testing

from meshnet.gossip.config import local
from meshnet.runtime import Node
from meshnet.runtime import node as node_mod
from tests.shell.helpers import FakeSwim, fake_factory, frame, running, wait_until

IP = "127.0.0.41"


def make_node(*, tcp_timeout: float = 1.0, tick: float | None = None, **kw) -> Node:
    return Node(
        local().with_(tcp_timeout=tcp_timeout),
        name="n1",
        bind=(IP, 0),
        swim_factory=fake_factory(tick),
        **kw,
    )


async def tcp_exchange(addr: tuple[str, int], data: bytes, *, timeout: float = 3.0) -> bytes:
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(*addr)
        out = b""
        async with stream:
            try:
                await stream.send_all(data)
                await stream.send_eof()
                while chunk := await stream.receive_some(65536):
                    out += chunk
            except trio.BrokenResourceError:
                pass  # the node reset the connection (it stopped reading an oversize frame)
    return out


async def test_udp_and_tcp_bound_on_one_port_and_reply_from_it():
    node = make_node()
    async with running(node):
        ip, port = node.bound_addr
        assert ip == IP and port > 0
        client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with client:
            await client.bind(("127.0.0.42", 0))
            await client.sendto(b"ping", node.bound_addr)
            with trio.fail_after(3):
                data, src = await client.recvfrom(100)
        assert data == b"pong"
        assert src == node.bound_addr  # sent from the bound socket, like memberlist
        swim: FakeSwim = node.swim
        assert swim.received[0][1] == b"ping"
        assert await tcp_exchange(node.bound_addr, frame(b"echo")) == frame(b"ECHO")


async def test_udp_garbage_and_core_errors_do_not_stop_the_node():
    node = make_node()
    async with running(node):
        client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with client:
            await client.bind(("127.0.0.42", 0))
            for junk in (b"", b"\x00" * 3, bytes(range(256)) * 200):
                await client.sendto(junk[:65000], node.bound_addr)
            # A core that raises on an input (a bug) is logged and counted; the node keeps serving.
            assert await tcp_exchange(node.bound_addr, frame(b"boom")) == b""
            await client.sendto(b"ping", node.bound_addr)
            with trio.fail_after(3):
                data, _ = await client.recvfrom(100)
        assert data == b"pong"
        assert node.stats["core_errors"] == 1
        assert node.stats["udp_received"] >= 4


async def test_inbound_tcp_garbage_eof_and_oversize_are_counted(monkeypatch):
    monkeypatch.setattr(node_mod, "MAX_STREAM_FRAME_BYTES", 64 * 1024)
    node = make_node()
    async with running(node):
        assert await tcp_exchange(node.bound_addr, b"\xff garbage") == b""
        assert await tcp_exchange(node.bound_addr, b"") == b""  # connect and close
        # A frame announcing 1 MiB is cut off at the (patched) 64 KiB bound.
        assert await tcp_exchange(node.bound_addr, frame(b"x" * (1 << 20))[: 200 * 1024]) == b""
        # Truncated frame then EOF: the core still sees what came (it decides it is garbage).
        assert await tcp_exchange(node.bound_addr, frame(b"abcdef")[:6]) == b""
        await wait_until(lambda: node.stats["tcp_in_garbage"] == 1, 3, "garbage counted")
        await wait_until(lambda: node.stats["tcp_in_oversize"] == 1, 3, "oversize counted")
        assert node.swim.stream_inputs[-1][1] == frame(b"abcdef")[:6]
        assert await tcp_exchange(node.bound_addr, frame(b"echo")) == frame(b"ECHO")


async def test_large_frames_are_measured_sparingly_and_answered_without_eof():
    node = make_node(tcp_timeout=5.0)
    async with running(node):
        big = frame(b"echo" + b"x" * (3 << 20))
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(*node.bound_addr)
            # No send_eof: like a push-pull peer, we wait for the answer with the stream open.
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, big)
                assert await stream.receive_some(100) == frame(b"ECHO")
        assert node.swim.stream_inputs[-1][1] == big
        assert node.swim.frame_length_calls < 80  # not once per 64 KiB chunk (~50+), let alone per byte
        # A mid-size frame that stops just above the eager threshold is still answered promptly.
        calls = node.swim.frame_length_calls
        mid = frame(b"echo" + b"y" * (300 * 1024))
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream(*node.bound_addr)
            async with stream:
                await stream.send_all(mid)
                assert await stream.receive_some(100) == frame(b"ECHO")
        assert node.swim.frame_length_calls - calls < 40


async def test_inbound_tcp_slow_client_is_cut_at_tcp_timeout():
    node = make_node(tcp_timeout=0.3)
    async with running(node):
        with trio.fail_after(3):
            stream = await trio.open_tcp_stream(*node.bound_addr)
            async with stream:
                await stream.send_all(b"\x00\x00")  # half a length prefix, then silence
                assert await stream.receive_some(10) == b""  # the node closed on us
        await wait_until(lambda: node.stats["tcp_in_timeouts"] == 1, 3, "timeout counted")


async def test_outbound_stream_reply_and_failures_reach_the_core():
    node = make_node()
    async with trio.open_nursery() as nursery:
        # A peer that answers one frame, and one that accepts but never answers.
        async def answer(stream):
            async with stream:
                await stream.receive_some(100)
                await stream.send_all(frame(b"reply") + b"trailing bytes are not ours")

        async def mute(stream):
            async with stream:
                await trio.sleep_forever()

        listeners = []
        for handler in (answer, mute):
            ls = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.43"))
            listeners.append(ls[0].socket.getsockname())
        closed = trio.socket.socket()
        await closed.bind(("127.0.0.43", 0))
        closed_addr = closed.getsockname()
        closed.close()  # nobody listens there: connection refused

        async with running(node):
            swim: FakeSwim = node.swim
            ids = {}

            def ask(name, addr, expect_reply=True, timeout=1.0):
                ids[name] = node._feed(
                    lambda now: swim.open_stream(
                        addr, frame(b"req"), expect_reply=expect_reply, timeout=timeout
                    )
                )

            ask("ok", listeners[0])
            ask("mute", listeners[1], timeout=0.3)
            ask("refused", closed_addr)
            ask("oneway", listeners[1], expect_reply=False)
            await wait_until(lambda: len(swim.replies) + len(swim.failed) == 3, 5, "three outcomes")
            assert swim.replies == {ids["ok"]: frame(b"reply")}
            assert sorted(swim.failed) == sorted([ids["mute"], ids["refused"]])
            assert node.stats["tcp_out_failed"] == 2
        nursery.cancel_scope.cancel()


async def test_single_timer_fires_core_deadlines():
    node = make_node(tick=0.05)
    async with running(node):
        await wait_until(lambda: node.swim.ticks >= 5, 3, "five timer ticks")


async def test_failed_join_is_retried_with_backoff():
    node = make_node(seeds=[("127.0.0.44", 7946)], retry_join_interval=0.05)
    async with running(node):
        await wait_until(lambda: len(node.swim.joins) >= 3, 5, "three join attempts")
        assert not node.is_joined


async def test_leave_then_stop_ends_run():
    node = make_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert await node.leave() is True
        assert node.swim.left
        node.stop()
        with trio.fail_after(3):
            await node.wait_stopped()


async def test_port_in_use_is_a_config_error_naming_the_fix():
    holder = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with holder:
        await holder.bind((IP, 0))
        port = holder.getsockname()[1]
        node = Node(local(), name="n2", bind=(IP, port), swim_factory=fake_factory())
        try:
            await node.run()
        except Exception as exc:  # ConfigError
            assert "cannot bind" in str(exc) and "--bind" in str(exc)
        else:
            raise AssertionError("expected a ConfigError")


async def test_the_gossip_udp_socket_gets_a_large_receive_buffer():
    """Bursts of NetworkDB datagrams overflowed the kernel's default buffer (RcvbufErrors, lost probes):
    the agent asks for UDP_RCVBUF (capped by rmem_max unless SO_RCVBUFFORCE is allowed, as for root)."""
    import os
    import socket

    default = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        default_size = default.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        default.close()
    udp, tcp = await node_mod._bind_udp_and_tcp(("127.0.8.61", 0))
    try:
        got = udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        udp.close()
        tcp.close()
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    reachable = node_mod.UDP_RCVBUF if os.geteuid() == 0 else min(node_mod.UDP_RCVBUF, rmem_max)
    assert got >= reachable > default_size / 2, (got, default_size, rmem_max)
