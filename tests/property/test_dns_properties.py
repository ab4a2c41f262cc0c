"""Properties of the DNS resolver core (meshnet.dns).

- random bytes, and truncations, bit flips and splices of valid queries, never raise out of
  ``Resolver.receive_query`` (fast path and dnspython path); every reply parses with dnspython, is a
  response, carries the query's id, and echoes the query's question byte for byte whenever the fast
  parser could read one; every query lands in exactly one outcome counter (none is dropped silently);
- well-formed queries for cluster and foreign names (any case, with or without EDNS0 and options) get
  replies that fit the client's UDP limit; the fast path and the dnspython path give the same message;
- garbage from upstreams never raises out of ``receive_upstream``/``upstream_failed``/``handle_timer`` and
  never finishes a forward unless it matches; every forward ends with exactly one reply;
- ``wire.truncate`` of any valid message to any limit >= 512 gives a parseable message within the limit.
"""

from __future__ import annotations

import random

import dns.edns
import dns.flags
import dns.message
import dns.rdata
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.dns import (
    EndpointRecord,
    Forward,
    NameTable,
    NetworkInfo,
    Reply,
    Resolver,
    ResolverConfig,
    ServicePort,
    ServiceRecord,
    ServiceTask,
    Transport,
    Upstream,
)
from meshnet.dns.wire import parse_query, truncate

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UPS = (Upstream("192.0.2.1"), Upstream("192.0.2.2"))
CLUSTER_NAMES = [
    "web",
    "www",
    "web.frontend",
    "api",
    "tasks.api",
    "_http._tcp.api",
    "big",
    "vip",
    "2.1.0.10.in-addr.arpa",
    "9.9.1.0.10.in-addr.arpa",
    "nosuch",
    "x.frontend",
    "localhost",
]
FOREIGN_NAMES = ["example.com", "a.b.example.org", "tasks.com", "com", ""]
TYPES = ["A", "AAAA", "PTR", "SRV", "ANY", "MX", "TXT", "NS", "CNAME", "HTTPS", "AXFR"]


def table() -> NameTable:
    t = NameTable()
    t.upsert_network(NetworkInfo("n1", "frontend", ("10.0.1.0/24", "fd00:1::/64")))
    t.upsert_endpoint("n1", EndpointRecord("e1", "web", ("10.0.1.2", "fd00:1::2"), aliases=("www",)))
    tasks = tuple(ServiceTask(f"api.{i}", (f"10.0.1.{10 + i}",)) for i in range(4))
    t.upsert_service("n1", ServiceRecord("s1", "api", tasks=tasks, ports=(ServicePort("http", "tcp", 80),)))
    many = tuple(ServiceTask(f"big.{i}", (f"10.0.1.{100 + i}", f"fd00:1::{100 + i:x}")) for i in range(60))
    t.upsert_service("n1", ServiceRecord("s2", "big", tasks=many))
    t.upsert_service("n1", ServiceRecord("s3", "vip", vips=("10.0.1.250",), tasks=tasks[:1]))
    return t


TABLE = table()


def resolver(*, fast: bool, seed: int = 1, **cfg) -> Resolver:
    return Resolver(
        TABLE, ResolverConfig(fast_path=fast, **cfg), rng=random.Random(seed), scope=("n1",), upstreams=UPS
    )


def random_case(name: str, flips: list[bool]) -> str:
    return "".join(c.upper() if flips[i % len(flips)] else c for i, c in enumerate(name)) if flips else name


@st.composite
def queries(draw) -> bytes:
    name = draw(st.sampled_from(CLUSTER_NAMES + FOREIGN_NAMES))
    name = random_case(name, draw(st.lists(st.booleans(), min_size=1, max_size=8)))
    rdtype = draw(st.sampled_from(TYPES))
    edns = draw(st.sampled_from([None, 0]))
    options = []
    if edns is not None and draw(st.booleans()):
        options.append(
            dns.edns.GenericOption(dns.edns.OptionType.COOKIE, draw(st.binary(min_size=8, max_size=8)))
        )
    q = dns.message.make_query(
        name or ".",
        rdtype,
        use_edns=edns if edns is not None else False,
        payload=draw(st.sampled_from([0, 512, 1232, 4096])),
        want_dnssec=edns is not None and draw(st.booleans()),
        options=options or None,
    )
    q.id = draw(st.integers(0, 65535))
    if not draw(st.booleans()):
        q.flags &= ~dns.flags.RD
    if draw(st.booleans()):
        q.flags |= dns.flags.CD
    return q.to_wire()


@st.composite
def mangled(draw) -> bytes:
    data = bytearray(draw(queries()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=6))
        elif op == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0, 0x3F, 0x40, 0xC0, 0xFF, 41]))
    return bytes(data)


def check_reply(data: bytes, out: object) -> None:
    """The invariants every reply to ``data`` keeps."""
    assert out is None or isinstance(out, (Reply, Forward))
    if not isinstance(out, Reply):
        return
    # Well formed. An UPDATE (opcode 5) is answered NOTIMP with its zone section echoed as sent, which
    # dnspython's UPDATE reader refuses unless it is an SOA question: check the framing as a QUERY.
    wire = (
        out.data[:2] + bytes([out.data[2] & 0x87]) + out.data[3:]
        if (out.data[2] >> 3) & 0xF == 5
        else out.data
    )
    msg = dns.message.from_wire(wire)
    assert msg.flags & dns.flags.QR
    assert out.data[:2] == data[:2]  # the query's id
    q = parse_query(data)
    if q is not None and q.question and not q.needs_full_parse:
        assert out.data[12 : 12 + len(q.question)] == q.question
        assert int.from_bytes(out.data[4:6], "big") == 1
    if q is not None and q.question:
        assert len(out.data) <= max(512, q.udp_limit()) or out.transport is Transport.TCP


OUTCOMES = (
    "answered",
    "forwarded",
    "duplicates",
    "refused_over_limit",
    "refused_no_upstream",
    "refused_policy",
    "formerr",
    "notimp",
    "badvers",
    "notauth",
    "dropped_short",
    "dropped_responses",
)


def check_accounted(r: Resolver) -> None:
    """Every query ended in exactly one outcome counter: nothing is dropped silently."""
    stats = r.stats.as_dict()
    assert sum(stats[k] for k in OUTCOMES) == stats["queries"]


@FUZZ
@given(data=st.binary(max_size=600), fast=st.booleans())
def test_random_bytes_never_raise(data, fast):
    r = resolver(fast=fast)
    check_reply(data, r.receive_query(data, client="c", transport=Transport.UDP, now=0.0))
    check_accounted(r)


@FUZZ
@given(data=mangled(), fast=st.booleans(), tcp=st.booleans())
def test_mangled_queries_never_raise_and_replies_echo_id_and_question(data, fast, tcp):
    r = resolver(fast=fast)
    transport = Transport.TCP if tcp else Transport.UDP
    check_reply(data, r.receive_query(data, client="c", transport=transport, now=0.0))
    check_reply(data, r.receive_query(data, client="c", transport=transport, now=0.0))  # a retransmission
    check_accounted(r)


@FAST
@given(data=queries())
def test_valid_queries_fast_path_equals_dnspython_path(data):
    fast = resolver(fast=True).receive_query(data, client="c", transport=Transport.UDP, now=0.0)
    slow = resolver(fast=False).receive_query(data, client="c", transport=Transport.UDP, now=0.0)
    check_reply(data, fast)
    check_reply(data, slow)
    assert type(fast) is type(slow)
    if isinstance(fast, Forward):
        assert fast.data == slow.data  # same rng seed: the same fresh id, same bytes
        return
    a, b = dns.message.from_wire(fast.data), dns.message.from_wire(slow.data)
    assert (a.id, a.flags, a.rcode(), a.question, a.edns, a.payload, a.ednsflags) == (
        b.id,
        b.flags,
        b.rcode(),
        b.question,
        b.edns,
        b.payload,
        b.ednsflags,
    )
    for section in ("answer", "authority", "additional"):

        def records(m, section=section):
            return sorted(
                (rrset.name, rrset.rdtype, rrset.ttl, rd.to_text())
                for rrset in getattr(m, section)
                for rd in rrset
            )

        if a.flags & dns.flags.TC:  # both cut record by record, from differently shuffled answers
            full = resolver(fast=True).receive_query(data, client="c", transport=Transport.TCP, now=0.0)
            everything = set(records(dns.message.from_wire(full.data)))
            assert set(records(a)) <= everything and set(records(b)) <= everything
            assert section != "answer" or (records(a) and records(b))
        else:
            assert records(a) == records(b)


@st.composite
def upstream_events(draw):
    """A sequence of (kind, upstream index, payload) the shell might report."""
    kinds = st.sampled_from(["good", "bad", "tc", "garbage", "mangled", "fail", "timer", "wrong_id"])
    return draw(st.lists(st.tuples(kinds, st.integers(0, 1), st.binary(max_size=40)), max_size=8))


def _response(data: bytes, rcode: int = 0, tc: bool = False) -> bytes:
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if tc:
        r.flags |= dns.flags.TC
    elif rcode == 0 and q.question[0].rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.99"))
    return r.to_wire()


@FAST
@given(query=queries(), events=upstream_events(), payload=st.sampled_from([0, 1232, 4096]))
def test_upstream_garbage_never_raises_and_every_forward_ends_with_one_reply(query, events, payload):
    r = resolver(fast=True, forward_timeout=1.0)
    data = query
    fwd = r.receive_query(data, client="c", transport=Transport.UDP, now=0.0)
    if not isinstance(fwd, Forward):
        return
    replies = []
    now = 0.0
    for kind, idx, blob in events:
        now += 0.1
        up = UPS[idx]
        if kind == "good":
            out = r.receive_upstream(up, _response(fwd.data), now=now)
        elif kind == "bad":
            out = r.receive_upstream(up, _response(fwd.data, rcode=2), now=now)
        elif kind == "tc":
            out = r.receive_upstream(up, _response(fwd.data, tc=True), now=now)
        elif kind == "garbage":
            out = r.receive_upstream(up, fwd.data[:2] + blob, now=now)
        elif kind == "mangled":
            good = bytearray(_response(fwd.data))
            good[blob[0] % len(good) if blob else 0] ^= 0xFF
            out = r.receive_upstream(up, bytes(good), transport=Transport.TCP, now=now)
        elif kind == "wrong_id":
            out = r.receive_upstream(up, bytes([fwd.data[0] ^ 1]) + _response(fwd.data)[1:], now=now)
        elif kind == "fail":
            out = r.upstream_failed(fwd.query_id, up, now=now)
        else:
            out = r.handle_timer(now=now)
        outs = out if isinstance(out, list) else [out]
        for o in outs:
            assert o is None or isinstance(o, (Reply, Forward))
            if isinstance(o, Reply):
                assert o.data[:2] == data[:2] and o.completes == fwd.query_id
                assert len(o.data) <= parse_query(data).udp_limit()
                replies.append(o)
    replies.extend(r.handle_timer(now=now + 5.0))
    assert len(replies) == 1 and r.outstanding == 0 and r.next_deadline() is None


@FAST
@given(n=st.integers(0, 200), limit=st.integers(512, 4096), edns=st.booleans(), extra=st.integers(0, 5))
def test_truncate_fits_and_stays_well_formed(n, limit, edns, extra):
    q = dns.message.make_query("some.name.example", "A", use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    name = q.question[0].name
    if n:
        rrset = r.find_rrset(r.answer, name, 1, 1, create=True)
        for i in range(n):
            rrset.add(dns.rdata.from_text(1, 1, f"10.{i // 250}.0.{i % 250 + 1}"), 30)
    for i in range(extra):
        r.additional.append(dns.rrset.from_text(f"ns{i}.example.", 30, "IN", "AAAA", f"2001:db8::{i + 1}"))
    wire = r.to_wire(max_size=65535)
    cut = truncate(wire, limit)
    assert len(cut) <= limit
    msg = dns.message.from_wire(cut)
    assert msg.question == r.question and msg.edns == r.edns
    kept = sum(len(rrset) for rrset in msg.answer)
    assert bool(msg.flags & dns.flags.TC) == (kept < n)
