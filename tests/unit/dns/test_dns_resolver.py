"""Resolver, local answers: flags, TTLs, scoping, removal, EDNS0, errors, truncation; fast path == dnspython."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dns_helpers import CLIENT, answer_values, ask, cluster, is_aa, query, rcode, resolver

from meshnet.dns import EndpointRecord, Forward, NetworkInfo, Reply, ServiceRecord, ServiceTask, Transport

both_paths = pytest.mark.parametrize("fast", [True, False], ids=["fast", "dnspython"])


@both_paths
@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("web", "A", ["10.0.1.2"]),
        ("www", "A", ["10.0.1.2"]),
        ("web", "AAAA", ["fd00:1::2"]),
        ("web.frontend", "A", ["10.0.1.2"]),
        ("web.backend", "A", ["10.0.2.3"]),
        ("db", "A", ["10.0.2.2"]),
        ("database.backend", "A", ["10.0.2.2"]),
        ("api", "A", ["10.0.1.5", "10.0.1.6"]),
        ("tasks.api", "A", ["10.0.1.5", "10.0.1.6"]),
        ("vipsvc", "A", ["10.0.1.100"]),
        ("tasks.vipsvc", "A", ["10.0.1.7"]),
        ("2.1.0.10.in-addr.arpa", "PTR", ["web.frontend."]),
        (
            "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa",
            "PTR",
            ["web.frontend."],
        ),
        ("_http._tcp.api", "SRV", ["0 0 8080 api.1.frontend.", "0 0 8080 api.2.frontend."]),
        ("localhost", "A", ["127.0.0.1"]),
    ],
)
def test_cluster_names_answered_authoritatively(fast, name, rdtype, expected):
    msg = ask(resolver(fast_path=fast), query(name, rdtype))
    assert rcode(msg) == "NOERROR" and is_aa(msg)
    assert answer_values(msg) == expected
    assert (
        msg.id == 0x1234
        and msg.flags & dns.flags.QR
        and msg.flags & dns.flags.RD
        and msg.flags & dns.flags.RA
    )


@both_paths
def test_srv_carries_task_addresses_in_additional(fast):
    msg = ask(resolver(fast_path=fast), query("_http._tcp.api", "SRV"))
    extra = sorted(f"{rrset.name} {rd}" for rrset in msg.additional for rd in rrset)
    assert extra == ["api.1.frontend. 10.0.1.5", "api.2.frontend. 10.0.1.6"]
    assert msg.edns == 0  # our OPT is still there, after the additional records


@both_paths
def test_ttls_short_for_containers_longer_for_vips(fast):
    r = resolver(fast_path=fast, ttl=5, vip_ttl=30)
    assert ask(r, query("web")).answer[0].ttl == 5
    assert ask(r, query("api")).answer[0].ttl == 5
    assert ask(r, query("2.1.0.10.in-addr.arpa", "PTR")).answer[0].ttl == 5
    assert ask(r, query("vipsvc")).answer[0].ttl == 30


@both_paths
def test_unknown_single_label_and_network_suffix_are_nxdomain_not_forwarded(fast):
    r = resolver(fast_path=fast)
    for name in ("nosuch", "nosuch.frontend", "secret", "77.1.0.10.in-addr.arpa"):
        msg = ask(r, query(name, "PTR" if name.endswith("arpa") else "A"))
        assert rcode(msg) == "NXDOMAIN" and is_aa(msg) and not msg.answer and not msg.authority, name
    assert r.stats.nxdomain == 4 and r.stats.forwarded == 0


@both_paths
def test_known_name_other_type_is_nodata(fast):
    r = resolver(fast_path=fast)
    for name, rdtype in (("db", "AAAA"), ("web", "MX"), ("web", "TXT"), ("2.1.0.10.in-addr.arpa", "A")):
        msg = ask(r, query(name, rdtype))
        assert rcode(msg) == "NOERROR" and is_aa(msg) and not msg.answer, (name, rdtype)


def test_any_query_returns_both_families():
    msg = ask(resolver(), query("web", "ANY"))
    assert answer_values(msg) == ["10.0.1.2", "fd00:1::2"]


def test_different_network_not_resolvable_but_is_from_its_own_scope():
    r = resolver(scope=("n1", "n2"))
    assert rcode(ask(r, query("secret"))) == "NXDOMAIN"
    assert rcode(ask(r, query("secret.other"))) == "NXDOMAIN"  # not in scope, and never forwarded
    r3 = resolver(scope=("n3",))
    assert answer_values(ask(r3, query("secret"))) == ["10.0.3.2"]
    assert rcode(ask(r3, query("web"))) == "NXDOMAIN"


@both_paths
def test_removal_is_visible_at_once_despite_the_answer_cache(fast):
    table = cluster()
    r = resolver(table, fast_path=fast, scope=("n1",))
    both = resolver(table, fast_path=fast, scope=("n1", "n2"))
    assert answer_values(ask(r, query("web"))) == ["10.0.1.2"]
    assert answer_values(ask(r, query("web"))) == ["10.0.1.2"]  # now cached
    assert answer_values(ask(both, query("web"))) == ["10.0.1.2"]
    table.remove_endpoint("n1", "e-web")
    assert rcode(ask(r, query("web"))) == "NXDOMAIN"
    assert answer_values(ask(both, query("web"))) == ["10.0.2.3"]  # the next network in scope has one
    assert rcode(ask(r, query("2.1.0.10.in-addr.arpa", "PTR"))) == "NXDOMAIN"
    table.upsert_endpoint("n1", EndpointRecord("e-web", "web", ("10.0.1.42",)))
    assert answer_values(ask(r, query("web"))) == ["10.0.1.42"]


def test_changes_outside_the_scope_keep_the_cache_and_scope_changes_drop_it():
    table = cluster()
    r = resolver(table, scope=("n1",))
    ask(r, query("web"))
    table.upsert_endpoint("n3", EndpointRecord("e-new", "new", ("10.0.3.9",)))
    assert r._cache  # n3 is not in scope: cached answers stay
    assert rcode(ask(r, query("new"))) == "NXDOMAIN"
    r.set_scope(("n1", "n3"))
    assert answer_values(ask(r, query("new"))) == ["10.0.3.9"]


def test_round_robin_order_varies_with_the_injected_rng_and_is_reproducible():
    table = cluster()
    table.upsert_service(
        "n1",
        ServiceRecord(
            "s-many", "many", tasks=tuple(ServiceTask(f"m{i}", (f"10.0.1.{20 + i}",)) for i in range(8))
        ),
    )

    def orders(seed):
        r = resolver(table, seed=seed)
        return [tuple(rd.to_text() for rd in ask(r, query("many")).answer[0]) for _ in range(6)]

    first = orders(1)
    assert first == orders(1)
    assert len(set(first)) > 1
    assert all(sorted(o) == sorted(first[0]) for o in first)


@both_paths
def test_question_case_is_echoed_for_0x20_clients(fast):
    r = resolver(fast_path=fast)
    out = r.receive_query(query("WeB.FrOnTeNd"), client=CLIENT, transport=Transport.UDP, now=0)
    assert b"\x03WeB\x08FrOnTeNd\x00" in out.data
    msg = dns.message.from_wire(out.data)
    assert msg.question[0].name.to_text() == "WeB.FrOnTeNd." and answer_values(msg) == ["10.0.1.2"]


@both_paths
def test_edns0_opt_in_answer_only_when_asked(fast):
    r = resolver(fast_path=fast, edns_udp_payload=1232)
    with_opt = ask(r, query("web", edns=0, payload=4096))
    assert with_opt.edns == 0 and with_opt.payload == 1232 and not with_opt.ednsflags & dns.flags.DO
    without = ask(r, query("web", edns=None))
    assert without.edns == -1


@both_paths
def test_edns_options_such_as_cookies_are_accepted(fast):
    data = query("web", options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")])
    msg = ask(resolver(fast_path=fast), data)
    assert answer_values(msg) == ["10.0.1.2"] and msg.edns == 0


@both_paths
def test_edns_version_1_gets_badvers(fast):
    r = resolver(fast_path=fast)
    msg = ask(r, query("web", edns=1))
    assert msg.rcode() == dns.rcode.BADVERS and msg.edns == 0 and not msg.answer
    assert r.stats.badvers == 1


def _big_table(n_tasks: int):
    table = cluster()
    tasks = tuple(ServiceTask(f"b{i}", (f"10.0.{1 + i // 250}.{i % 250 + 1}",)) for i in range(n_tasks))
    table.upsert_service("n1", ServiceRecord("s-big", "big", tasks=tasks))
    return table


@both_paths
def test_udp_answer_over_512_truncated_record_by_record_with_tc(fast):
    r = resolver(_big_table(100), fast_path=fast)
    out = r.receive_query(query("big", edns=None), client=CLIENT, transport=Transport.UDP, now=0)
    assert len(out.data) <= 512
    msg = dns.message.from_wire(out.data)
    assert msg.flags & dns.flags.TC and rcode(msg) == "NOERROR"
    assert 25 <= len(msg.answer[0]) < 100  # as many whole records as fit (12 + 8 + 16 per record)
    assert r.stats.truncated == 1


@both_paths
def test_udp_answer_uses_the_edns_size_and_keeps_opt_when_truncated(fast):
    r = resolver(_big_table(300), fast_path=fast)
    out = r.receive_query(query("big", payload=1232), client=CLIENT, transport=Transport.UDP, now=0)
    assert 512 < len(out.data) <= 1232
    msg = dns.message.from_wire(out.data)
    assert msg.flags & dns.flags.TC and msg.edns == 0
    out = r.receive_query(query("big", payload=8192), client=CLIENT, transport=Transport.UDP, now=0)
    msg = dns.message.from_wire(out.data)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 300


@both_paths
def test_tcp_answer_is_not_truncated(fast):
    r = resolver(_big_table(300), fast_path=fast)
    msg = ask(r, query("big", edns=None), transport=Transport.TCP)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 300


@pytest.mark.parametrize(
    ("data", "expected_rcode"),
    [
        (struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0), "FORMERR"),  # no question
        (struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 2, "FORMERR"),
        (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05ab", "FORMERR"),  # name runs out
        (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),  # pointer
        (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01junk", "FORMERR"),
        (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 1) + b"\x01a\x00\x00\x01\x00\x01\x00\x00)", "FORMERR"),
        (struct.pack("!HHHHHH", 7, 0x2100, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01", "NOTIMP"),  # STATUS
        (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x03", "REFUSED"),  # CH
        (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\x00\x00\xfc\x00\x01", "REFUSED"),  # AXFR
        (
            struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\x00\x00\x29\x00\x01",
            "FORMERR",
        ),  # qtype OPT
    ],
)
@both_paths
def test_malformed_or_unsupported_queries_get_an_error_with_the_id(fast, data, expected_rcode):
    r = resolver(fast_path=fast)
    out = r.receive_query(data, client=CLIENT, transport=Transport.UDP, now=0)
    assert isinstance(out, Reply)
    assert struct.unpack_from("!H", out.data)[0] == 7
    flags = struct.unpack_from("!H", out.data, 2)[0]
    assert flags & 0x8000 and dns.rcode.to_text(flags & 0xF) == expected_rcode


@both_paths
def test_short_packets_and_responses_are_dropped_and_counted(fast):
    r = resolver(fast_path=fast)
    assert r.receive_query(b"\x00\x01\x02", client=CLIENT, transport=Transport.UDP, now=0) is None
    response = dns.message.make_response(dns.message.from_wire(query("web"))).to_wire()
    assert r.receive_query(response, client=CLIENT, transport=Transport.UDP, now=0) is None
    assert r.stats.dropped_short == 1 and r.stats.dropped_responses == 1 and r.stats.queries == 2


def test_unusual_but_valid_query_goes_through_dnspython():
    q = dns.message.make_query("web", "A", use_edns=0)
    q.additional.append(dns.rrset.from_text("extra.", 0, "IN", "A", "1.2.3.4"))  # 2 additional records
    msg = ask(resolver(), q.to_wire())
    assert answer_values(msg) == ["10.0.1.2"]


def test_tsig_signed_query_is_notauth_we_hold_no_keys():
    import dns.tsigkeyring

    q = dns.message.make_query("web", "A")
    q.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"}), keyname="k.")
    r = resolver()
    out = r.receive_query(q.to_wire(), client=CLIENT, transport=Transport.UDP, now=0)
    assert struct.unpack_from("!H", out.data, 2)[0] & 0xF == 9 and r.stats.notauth == 1


def test_no_upstreams_clears_ra_and_refuses_forwarded_names():
    r = resolver(upstreams=())
    assert not ask(r, query("web")).flags & dns.flags.RA
    msg = ask(r, query("example.com"))
    assert rcode(msg) == "REFUSED" and r.stats.refused_no_upstream == 1


@pytest.mark.parametrize(
    ("name", "rdtype", "kw"),
    [
        ("web", "A", {}),
        ("WEB.frontend", "AAAA", {}),
        ("api", "A", {"edns": None}),
        ("tasks.api", "ANY", {}),
        ("_http._tcp.api", "SRV", {}),
        ("2.1.0.10.in-addr.arpa", "PTR", {}),
        ("nosuch", "A", {}),
        ("db", "MX", {"want_dnssec": True}),
    ],
)
def test_fast_path_equals_the_dnspython_rendering(name, rdtype, kw):
    data = query(name, rdtype, **kw)
    fast = ask(resolver(fast_path=True), data)
    slow = ask(resolver(fast_path=False), data)
    assert (fast.id, fast.flags, fast.rcode(), fast.question) == (
        slow.id,
        slow.flags,
        slow.rcode(),
        slow.question,
    )
    assert (fast.edns, fast.payload, fast.ednsflags) == (slow.edns, slow.payload, slow.ednsflags)
    for section in ("answer", "authority", "additional"):
        assert answer_values(fast, section) == answer_values(slow, section)
        assert sorted((r.name, r.rdtype, r.ttl) for r in getattr(fast, section)) == sorted(
            (r.name, r.rdtype, r.ttl) for r in getattr(slow, section)
        )


def test_network_declared_later_enables_name_dot_network():
    table = cluster()
    table.upsert_endpoint("n9", EndpointRecord("e9", "late", ("10.9.0.1",)))
    r = resolver(table, scope=("n9",))
    assert isinstance(
        r.receive_query(query("late.ninth"), client=CLIENT, transport=Transport.UDP, now=0), Forward
    )
    table.upsert_network(NetworkInfo("n9", "ninth", ("10.9.0.0/16",)))
    assert answer_values(ask(r, query("late.ninth"))) == ["10.9.0.1"]
    assert rcode(ask(r, query("9.9.9.10.in-addr.arpa", "PTR"))) == "NXDOMAIN"


def test_answer_cache_is_bounded():
    r = resolver(answer_cache_size=3)
    for name in ("web", "www", "db", "api", "nosuch", "vipsvc"):
        ask(r, query(name))
        assert len(r._cache) <= 3


def test_stats_account_for_every_query():
    r = resolver()
    for name in ("web", "nosuch", "example.com"):
        r.receive_query(query(name), client=CLIENT, transport=Transport.UDP, now=0)
    s = r.stats.as_dict()
    assert s["queries"] == 3 and s["answered"] == 2 and s["nxdomain"] == 1 and s["forwarded"] == 1


def test_rdatatype_names_in_helpers_are_real():
    assert dns.rdatatype.from_text("SRV") == 33
