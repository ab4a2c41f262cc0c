"""Builders for the DNS core tests: a small cluster's name table, queries, and asking a resolver."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype

from meshnet.dns import (
    EndpointRecord,
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

CLIENT = ("10.0.1.9", 40000)
UP1 = Upstream("192.0.2.1")
UP2 = Upstream("192.0.2.2")
UP_LOCAL = Upstream("127.0.0.53", is_host_loopback=True)


def cluster() -> NameTable:
    """Networks ``frontend`` (n1, IPv4+IPv6), ``backend`` (n2, IPv4), ``other`` (n3), with:

    n1: container ``web`` (10.0.1.2, fd00:1::2, alias ``www``), service ``api`` (round robin, tasks api.1
        10.0.1.5 and api.2 10.0.1.6, SRV port ``http``/tcp 8080), service ``vipsvc`` (VIP 10.0.1.100, task
        vipsvc.1 10.0.1.7);
    n2: container ``db`` (10.0.2.2, alias ``database``), container ``web`` (10.0.2.3: same name, other net);
    n3: container ``secret`` (10.0.3.2).
    """
    t = NameTable()
    t.upsert_network(NetworkInfo("n1", "frontend", ("10.0.1.0/24", "fd00:1::/64")))
    t.upsert_network(NetworkInfo("n2", "backend", ("10.0.2.0/24",)))
    t.upsert_network(NetworkInfo("n3", "other", ("10.0.3.0/24",)))
    t.upsert_endpoint("n1", EndpointRecord("e-web", "web", ("10.0.1.2", "fd00:1::2"), aliases=("www",)))
    t.upsert_service(
        "n1",
        ServiceRecord(
            "s-api",
            "api",
            tasks=(ServiceTask("api.1", ("10.0.1.5",)), ServiceTask("api.2", ("10.0.1.6",))),
            ports=(ServicePort("http", "tcp", 8080),),
        ),
    )
    t.upsert_service(
        "n1",
        ServiceRecord(
            "s-vip", "vipsvc", vips=("10.0.1.100",), tasks=(ServiceTask("vipsvc.1", ("10.0.1.7",)),)
        ),
    )
    t.upsert_endpoint("n2", EndpointRecord("e-db", "db", ("10.0.2.2",), aliases=("database",)))
    t.upsert_endpoint("n2", EndpointRecord("e-web2", "web", ("10.0.2.3",)))
    t.upsert_endpoint("n3", EndpointRecord("e-secret", "secret", ("10.0.3.2",)))
    return t


def resolver(
    table: NameTable | None = None,
    *,
    scope=("n1", "n2"),
    upstreams=(UP1, UP2),
    seed: int = 7,
    **config,
) -> Resolver:
    return Resolver(
        table if table is not None else cluster(),
        ResolverConfig(**config),
        rng=random.Random(seed),
        scope=scope,
        upstreams=upstreams,
    )


def query(
    name: str, rdtype: str = "A", *, qid: int = 0x1234, edns: int | None = 0, payload: int = 1232, **kw
) -> bytes:
    """A query's wire form (EDNS0 by default, like dig)."""
    q = dns.message.make_query(
        name, rdtype, use_edns=edns if edns is not None else False, payload=payload, **kw
    )
    q.id = qid
    return q.to_wire()


def ask(
    r: Resolver, data: bytes, *, transport: Transport = Transport.UDP, now: float = 0.0
) -> dns.message.Message:
    """Send ``data`` to ``r``, expect a local reply, return it parsed."""
    out = r.receive_query(data, client=CLIENT, transport=transport, now=now)
    assert isinstance(out, Reply), out
    assert out.client == CLIENT and out.transport is transport
    return dns.message.from_wire(out.data)


def answer_values(msg: dns.message.Message, section: str = "answer") -> list[str]:
    """Every record's rdata text in ``section``, sorted."""
    return sorted(rd.to_text() for rrset in getattr(msg, section) for rd in rrset)


def rcode(msg: dns.message.Message) -> str:
    return dns.rcode.to_text(msg.rcode())


def is_aa(msg: dns.message.Message) -> bool:
    return bool(msg.flags & dns.flags.AA)


def response_to(data: bytes, *answers: str, rc: int = 0, ttl: int = 60, flags: int = 0) -> bytes:
    """An upstream's reply to query ``data``: A records ``answers`` for its question, rcode ``rc``."""
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q, recursion_available=True)
    r.set_rcode(rc)
    r.flags |= flags
    name = q.question[0].name
    for address in answers:
        rrset = r.find_rrset(r.answer, name, 1, dns.rdatatype.A, create=True)
        rrset.add(dns.rdata.from_text(1, dns.rdatatype.A, address), ttl)
    return r.to_wire(max_size=65535)
