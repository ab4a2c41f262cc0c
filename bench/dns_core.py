#!/usr/bin/env python3
"""Queries per second of the pure DNS resolver core (meshnet.dns), against dnspython alone.

    .venv/bin/python bench/dns_core.py                   # 1,000 names, best of 5 rounds of 20,000 queries
    .venv/bin/python bench/dns_core.py --names 5000 --queries 50000 --rounds 3 --json /tmp/dns_core.json

No sockets and no event loop: each figure is the cost of the Python work per query, so it is the
ceiling for the trio server that will wrap the core (environment.md section 4 measured that trio's
per-datagram await adds about 50 us, and that a minimal dnspython handler with no I/O does 4,040/s).
The table holds ``--names`` containers ``cN`` on one network (``bench``, 10.x.y.z), a 10-task
round-robin service ``svc`` and a VIP service ``vip``; queries are dig-like (EDNS0, random ids, names in
mixed case), cycled from a pre-built list so building them is not timed. Figures:

- ``fast, cluster A``: ``Resolver.receive_query`` on the default configuration, warm answer cache
  (steady state: the cache holds rendered answers until the sandbox's networks change);
- ``fast, cluster A, no cache``: the same with ``answer_cache_size=0`` (every query does the table
  lookup and renders records: the cost right after a change);
- ``fast, service 10 tasks``: round-robin answers (10 records shuffled per query);
- ``fast, forward round trip``: an external name: ``receive_query`` -> ``Forward``, then the upstream's
  reply through ``receive_upstream`` -> ``Reply``;
- ``dnspython path, cluster A``: the resolver with ``fast_path=False`` (dnspython parses and renders);
- ``dnspython parse+render alone``: ``from_wire``, ``make_response``, an A rrset, ``to_wire`` (the
  environment.md handler), and ``dnspython parse alone``: ``from_wire`` only.

Each figure is the best of ``--rounds`` rounds (queries/s and microseconds per query).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

# bench/dns.py sits beside this file: the script directory must not shadow dnspython's ``dns`` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import dns.message  # noqa: E402
import dns.rrset  # noqa: E402

from meshnet.dns import (  # noqa: E402
    EndpointRecord,
    Forward,
    NameTable,
    NetworkInfo,
    Reply,
    Resolver,
    ResolverConfig,
    ServiceRecord,
    ServiceTask,
    Transport,
    Upstream,
)

UPSTREAMS = (Upstream("192.0.2.1"), Upstream("192.0.2.2"))
CLIENT = ("10.0.0.2", 40000)


def build_table(names: int) -> NameTable:
    table = NameTable()
    table.upsert_network(NetworkInfo("n1", "bench", ("10.0.0.0/8",)))
    base = int(ipaddress.IPv4Address("10.1.0.0"))
    for i in range(names):
        table.upsert_endpoint("n1", EndpointRecord(f"e{i}", f"c{i}", (ipaddress.IPv4Address(base + i),)))
    tasks = tuple(ServiceTask(f"svc.{i}", (f"10.200.0.{i + 1}",)) for i in range(10))
    table.upsert_service("n1", ServiceRecord("s1", "svc", tasks=tasks))
    table.upsert_service("n1", ServiceRecord("s2", "vip", vips=("10.250.0.1",), tasks=tasks[:2]))
    return table


def make_queries(names: list[str], rng: random.Random, count: int = 4096) -> list[bytes]:
    out = []
    for i in range(count):
        name = names[i % len(names)]
        mixed = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
        q = dns.message.make_query(mixed, "A", use_edns=0, payload=1232)
        q.id = rng.getrandbits(16)
        out.append(q.to_wire())
    return out


def rate(fn: Callable[[bytes], object], queries: list[bytes], total: int, rounds: int) -> float:
    """Best queries/s over ``rounds`` rounds of ``total`` calls."""
    best = float("inf")
    n = len(queries)
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(total):
            fn(queries[i % n])
        best = min(best, time.perf_counter() - start)
    return total / best


def resolver(table: NameTable, **config) -> Resolver:
    return Resolver(table, ResolverConfig(**config), rng=random.Random(1), scope=("n1",), upstreams=UPSTREAMS)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=1000, help="containers in the table (1000)")
    parser.add_argument("--queries", type=int, default=20000, help="queries per round (20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts (5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    rng = random.Random(42)
    table = build_table(args.names)
    cluster_q = make_queries([f"c{i}" for i in range(args.names)], rng)
    svc_q = make_queries(["svc"], rng)
    ext_q = make_queries([f"host{i}.example.com" for i in range(1000)], rng)
    total, rounds = args.queries, args.rounds

    def receive(r: Resolver) -> Callable[[bytes], object]:
        def fn(data: bytes) -> object:
            out = r.receive_query(data, client=CLIENT, transport=Transport.UDP, now=0.0)
            assert isinstance(out, Reply)
            return out

        return fn

    fwd_r = resolver(table)

    def forward_round_trip(data: bytes) -> object:
        fwd = fwd_r.receive_query(data, client=CLIENT, transport=Transport.UDP, now=0.0)
        assert isinstance(fwd, Forward)
        # an upstream reply: the query itself with QR and RA set, one A record appended (pre-cooked bytes
        # would hide nothing: the core only reads the header and the question)
        reply = bytearray(fwd.data)
        reply[2] |= 0x80
        reply[3] |= 0x80
        out = fwd_r.receive_upstream(UPSTREAMS[0], bytes(reply), now=0.0)
        assert isinstance(out, Reply)
        return out

    def dnspython_handler(data: bytes) -> bytes:
        m = dns.message.from_wire(data)
        resp = dns.message.make_response(m)
        resp.answer.append(dns.rrset.from_text(m.question[0].name, 5, "IN", "A", "10.1.0.1"))
        return resp.to_wire()

    # warm the answer cache once (steady state)
    warm = resolver(table)
    for data in cluster_q:
        warm.receive_query(data, client=CLIENT, transport=Transport.UDP, now=0.0)

    figures = {
        "fast, cluster A": rate(receive(warm), cluster_q, total, rounds),
        "fast, cluster A, no cache": rate(
            receive(resolver(table, answer_cache_size=0)), cluster_q, total, rounds
        ),
        "fast, service 10 tasks": rate(receive(resolver(table)), svc_q, total, rounds),
        "fast, forward round trip": rate(forward_round_trip, ext_q, total, rounds),
        "dnspython path, cluster A": rate(
            receive(resolver(table, fast_path=False)), cluster_q, total // 4, rounds
        ),
        "dnspython parse+render alone": rate(dnspython_handler, cluster_q, total // 4, rounds),
        "dnspython parse alone": rate(dns.message.from_wire, cluster_q, total // 4, rounds),
    }
    base = figures["dnspython parse+render alone"]
    print(f"DNS core, {args.names} names, best of {rounds} rounds (no I/O, one core)")
    print(f"{'':32} {'queries/s':>12} {'us/query':>9} {'x dnspython':>12}")
    for label, qps in figures.items():
        print(f"{label:32} {qps:12,.0f} {1e6 / qps:9.1f} {qps / base:12.1f}")
    if args.json:
        args.json.write_text(
            json.dumps({"names": args.names, "rounds": rounds, "qps": figures}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
