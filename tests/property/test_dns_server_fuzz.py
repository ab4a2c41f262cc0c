"""The real resolver server (``meshnet.runtime.dns_server``) on loopback, fed random and malformed packets.

The server runs in-process on its own trio loop in a background thread, bound to 127.0.0.1 on a free
port in this namespace, with a small cluster table and no upstream (so nothing leaves the machine).
Hypothesis sends garbage, mutated valid queries and random TCP byte streams; after every example a
well-formed query must still be answered correctly, and the server's ``core_errors`` must stay 0 (the
core never raised).
"""

from __future__ import annotations

import random
import socket
import struct
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.dns import EndpointRecord, NameTable, NetworkInfo, Resolver
from meshnet.runtime.dns_server import ResolverServer


class _Running:
    def __init__(self) -> None:
        table = NameTable()
        table.upsert_network(NetworkInfo("n1", "frontend", ("10.0.1.0/24",)))
        table.upsert_endpoint("n1", EndpointRecord("e1", "web", ("10.0.1.2",), ("www",)))
        self.resolver = Resolver(table, rng=random.Random(1), scope=("n1",))
        self.server = ResolverServer(self.resolver, netns=None, address=("127.0.0.1", 0))
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "server did not start"

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(self.server.run)
                self._ready.set()

    def stop(self) -> None:
        assert self._token is not None and self._cancel is not None
        self._token.run_sync_soon(self._cancel.cancel)
        self.thread.join(10)


@pytest.fixture(scope="module")
def running():
    r = _Running()
    yield r
    r.stop()


def _ask(addr, wire: bytes, *, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, addr)
        return s.recv(65535)


def _check_alive(r: _Running) -> None:
    q = dns.message.make_query("web.frontend", "A")
    resp = dns.message.from_wire(_ask(r.server.bound, q.to_wire()))
    assert resp.id == q.id and resp.rcode() == dns.rcode.NOERROR
    assert [str(rd) for rd in resp.answer[0]] == ["10.0.1.2"]
    assert r.server.stats["core_errors"] == 0
    assert r.resolver.stats.queries >= 1


def _valid_query() -> bytes:
    return dns.message.make_query("www", "A", use_edns=True).to_wire()


_mutations = st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_random_datagrams_never_break_the_server(running, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, running.server.bound)
    _check_alive(running)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=_mutations, cut=st.integers(0, 80))
def test_mutated_queries_get_an_answer_or_are_dropped_never_a_crash(running, mutations, cut):
    wire = bytearray(_valid_query())
    for pos, value in mutations:
        if pos < len(wire):
            wire[pos] = value
    wire = bytes(wire[: len(wire) - cut]) if cut < len(wire) else bytes(wire)
    wire = (wire[:2] + bytes([wire[2] & 0x7F]) + wire[3:]) if len(wire) >= 3 else wire  # QR clear
    before = running.resolver.stats.queries
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.sendto(wire, running.server.bound)
        if len(wire) >= 12:
            # Every query with a header is answered (an answer, FORMERR, NOTIMP, REFUSED, ...), with its id.
            reply = s.recv(65535)
            assert reply[:2] == wire[:2] and reply[2] & 0x80
    # The liveness query is served after the mutated one (one socket, FIFO), so both are counted by then.
    _check_alive(running)
    assert running.resolver.stats.queries == before + 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=300), max_size=4), framed=st.booleans())
def test_random_tcp_streams_never_break_the_server(running, chunks, framed):
    with socket.create_connection(running.server.bound, timeout=2.0) as s:
        for chunk in chunks:
            s.sendall(struct.pack("!H", len(chunk)) + chunk if framed else chunk)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65535):
                pass
        except OSError:
            pass
    _check_alive(running)


def test_tcp_query_and_oversized_udp_answer_is_truncated(running):
    table = running.resolver._table  # the server's own table: add 60 addresses under one name
    for i in range(60):
        table.upsert_endpoint("n1", EndpointRecord(f"big{i}", "big", (f"10.0.1.{100 + i}",)))
    q = dns.message.make_query("big", "A")
    udp = dns.message.from_wire(_ask(running.server.bound, q.to_wire()))
    assert udp.flags & dns.flags.TC
    wire = q.to_wire()
    with socket.create_connection(running.server.bound, timeout=2.0) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            buf += s.recv(65535)
    tcp = dns.message.from_wire(buf[2:])
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 60
    assert tcp.answer[0].rdtype == dns.rdatatype.A
