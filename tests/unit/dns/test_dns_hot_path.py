"""The resolver's hot path: whole replies reused for byte-identical UDP queries (ids patched)."""

from __future__ import annotations

import dns.flags
from dns_helpers import CLIENT, answer_values, ask, cluster, query, rcode, resolver

from meshnet.dns import EndpointRecord, Transport


def test_identical_queries_get_their_own_id_and_the_same_answer():
    r = resolver()
    first = ask(r, query("web", qid=1))
    second = ask(r, query("web", qid=2))  # served from the hot cache
    assert (first.id, second.id) == (1, 2)
    assert answer_values(first) == answer_values(second) == ["10.0.1.2"]
    assert r._hot  # it was used
    assert r.stats.answered == 2 and r.stats.queries == 2


def test_a_table_change_is_visible_at_once():
    table = cluster()
    r = resolver(table, scope=("n1",))  # n2 has another "web"
    assert answer_values(ask(r, query("web", qid=1))) == ["10.0.1.2"]
    assert answer_values(ask(r, query("web", qid=2))) == ["10.0.1.2"]
    table.upsert_endpoint("n1", EndpointRecord("e-web", "web", ("10.0.1.77",)))
    assert answer_values(ask(r, query("web", qid=3))) == ["10.0.1.77"]
    table.remove_endpoint("n1", "e-web")
    assert rcode(ask(r, query("web", qid=4))) == "NXDOMAIN"
    assert rcode(ask(r, query("web", qid=5))) == "NXDOMAIN"
    assert r.stats.nxdomain == 2


def test_upstream_change_updates_the_ra_flag():
    r = resolver()
    assert ask(r, query("web", qid=1)).flags & dns.flags.RA
    assert ask(r, query("web", qid=2)).flags & dns.flags.RA
    r.set_upstreams(())
    assert not ask(r, query("web", qid=3)).flags & dns.flags.RA


def test_multi_record_answers_are_not_frozen_and_tcp_never_uses_it():
    r = resolver()
    orders = {tuple(rd.to_text() for rd in ask(r, query("api", qid=i)).answer[0]) for i in range(30)}
    assert len(orders) > 1  # still shuffled per query
    ask(r, query("www", qid=1))
    out = r.receive_query(query("www", qid=9), client=CLIENT, transport=Transport.TCP, now=0.0)
    assert out.data[:2] == b"\x00\x09"
