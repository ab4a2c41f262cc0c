"""Resolver, forwarding: fan-out, first good answer wins, dead upstreams, deadlines, limits, TC, EDNS0."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
from dns_helpers import CLIENT, UP1, UP2, UP_LOCAL, answer_values, query, resolver, response_to

from meshnet.dns import Forward, Reply, Transport
from meshnet.dns.wire import TC

UDP, TCP = Transport.UDP, Transport.TCP


def forward(r, name="example.com", *, client=CLIENT, transport=UDP, now=0.0, **kw) -> Forward:
    out = r.receive_query(query(name, **kw), client=client, transport=transport, now=now)
    assert isinstance(out, Forward), out
    return out


def parsed(reply: Reply) -> dns.message.Message:
    return dns.message.from_wire(reply.data)


def test_fanout_to_all_upstreams_same_bytes_except_a_fresh_id():
    r = resolver(upstreams=(UP1, UP2, UP_LOCAL))
    data = query("example.com", qid=0x1234)
    fwd = r.receive_query(data, client=CLIENT, transport=UDP, now=10.0)
    assert isinstance(fwd, Forward)
    assert fwd.upstreams == (UP1, UP2, UP_LOCAL) and UP_LOCAL.is_host_loopback
    assert fwd.transport is UDP and fwd.deadline_at == 13.0
    assert fwd.data[2:] == data[2:] and struct.unpack_from("!H", fwd.data)[0] == fwd.query_id
    assert r.outstanding == 1 and r.next_deadline() == 13.0 and r.stats.forwarded == 1


def test_first_good_answer_wins_and_is_returned_at_once_with_the_client_id():
    r = resolver()
    fwd = forward(r, qid=0xBEEF)
    reply = r.receive_upstream(UP2, response_to(fwd.data, "93.184.216.34"), now=0.05)
    assert isinstance(reply, Reply) and reply.client == CLIENT and reply.completes == fwd.query_id
    msg = parsed(reply)
    assert msg.id == 0xBEEF and answer_values(msg) == ["93.184.216.34"]
    assert r.outstanding == 0 and r.next_deadline() is None
    # the slower upstream's answer is late: ignored and counted
    assert r.receive_upstream(UP1, response_to(fwd.data, "1.1.1.1"), now=0.06) is None
    assert r.stats.upstream_unmatched == 1 and r.stats.forward_answered == 1


def test_nxdomain_is_a_good_answer():
    r = resolver()
    fwd = forward(r, "nosuch.example.com")
    reply = r.receive_upstream(UP1, response_to(fwd.data, rc=dns.rcode.NXDOMAIN), now=0.01)
    assert dns.rcode.to_text(parsed(reply).rcode()) == "NXDOMAIN"


def test_servfail_does_not_win_over_a_later_good_answer():
    r = resolver()
    fwd = forward(r)
    assert r.receive_upstream(UP1, response_to(fwd.data, rc=dns.rcode.SERVFAIL), now=0.01) is None
    assert r.receive_upstream(UP1, response_to(fwd.data, "5.5.5.5"), now=0.015) is None  # UP1 is done
    reply = r.receive_upstream(UP2, response_to(fwd.data, "6.6.6.6"), now=0.5)
    assert answer_values(parsed(reply)) == ["6.6.6.6"] and r.stats.upstream_error_rcodes == 1


def test_refused_from_all_upstreams_relays_the_first_error():
    r = resolver()
    fwd = forward(r)
    assert r.receive_upstream(UP1, response_to(fwd.data, rc=dns.rcode.REFUSED), now=0.01) is None
    reply = r.receive_upstream(UP2, response_to(fwd.data, rc=dns.rcode.SERVFAIL), now=0.02)
    msg = parsed(reply)
    assert dns.rcode.to_text(msg.rcode()) == "REFUSED" and msg.id == 0x1234
    assert r.stats.forward_failed == 1 and r.outstanding == 0


def test_one_dead_upstream_does_not_stall_the_other_answer_arrives_immediately():
    r = resolver()
    fwd = forward(r, now=100.0)
    assert r.upstream_failed(fwd.query_id, UP1, now=100.0) is None  # e.g. ICMP unreachable
    reply = r.receive_upstream(UP2, response_to(fwd.data, "7.7.7.7"), now=100.002)
    assert answer_values(parsed(reply)) == ["7.7.7.7"] and r.stats.upstream_failures == 1


def test_silent_upstream_does_not_delay_the_answer_of_the_live_one():
    r = resolver()
    fwd = forward(r, now=0.0)
    # UP1 never answers; UP2 answers after 3 ms and the client has its answer then, not at any timeout
    reply = r.receive_upstream(UP2, response_to(fwd.data, "8.8.4.4"), now=0.003)
    assert isinstance(reply, Reply) and r.handle_timer(now=10.0) == []


def test_all_upstreams_failed_gives_servfail_at_once():
    r = resolver()
    fwd = forward(r)
    assert r.upstream_failed(fwd.query_id, UP1, now=0.0) is None
    reply = r.upstream_failed(fwd.query_id, UP2, now=0.0)
    msg = parsed(reply)
    assert dns.rcode.to_text(msg.rcode()) == "SERVFAIL" and msg.question[0].name.to_text() == "example.com."
    assert msg.edns == 0 and r.stats.forward_failed == 1
    assert r.upstream_failed(fwd.query_id, UP2, now=0.0) is None  # already finished


def test_deadline_gives_servfail_from_handle_timer():
    r = resolver(forward_timeout=2.5)
    fwd = forward(r, now=1.0)
    assert r.next_deadline() == 3.5
    assert r.handle_timer(now=3.4) == []
    (reply,) = r.handle_timer(now=3.5)
    assert dns.rcode.to_text(parsed(reply).rcode()) == "SERVFAIL" and reply.completes == fwd.query_id
    assert r.stats.forward_timeouts == 1 and r.outstanding == 0 and r.next_deadline() is None
    assert r.receive_upstream(UP1, response_to(fwd.data, "1.2.3.4"), now=3.6) is None


def test_deadline_relays_an_upstream_error_when_one_came():
    r = resolver()
    fwd = forward(r)
    r.receive_upstream(UP1, response_to(fwd.data, rc=dns.rcode.REFUSED), now=0.1)
    (reply,) = r.handle_timer(now=3.0)
    assert dns.rcode.to_text(parsed(reply).rcode()) == "REFUSED"


def test_over_the_limit_is_refused_visibly_and_counted():
    r = resolver(max_concurrent_forwards=2)
    first = forward(r, "a.example.com", qid=1)
    forward(r, "b.example.com", qid=2)
    out = r.receive_query(query("c.example.com", qid=3), client=CLIENT, transport=UDP, now=0.0)
    assert isinstance(out, Reply)
    msg = parsed(out)
    assert msg.id == 3 and dns.rcode.to_text(msg.rcode()) == "REFUSED" and msg.flags & dns.flags.RA
    assert r.stats.refused_over_limit == 1 and r.outstanding == 2
    # cluster names are still answered while forwards are saturated
    local = r.receive_query(query("web"), client=CLIENT, transport=UDP, now=0.0)
    assert answer_values(parsed(local)) == ["10.0.1.2"]
    # a slot frees when a forward finishes
    r.receive_upstream(UP1, response_to(first.data, "1.1.1.1"), now=0.1)
    assert isinstance(
        r.receive_query(query("c.example.com", qid=3), client=CLIENT, transport=UDP, now=0.2), Forward
    )


def test_udp_retransmission_is_not_forwarded_twice_but_other_clients_are():
    r = resolver()
    fwd = forward(r, qid=5)
    assert r.receive_query(query("example.com", qid=5), client=CLIENT, transport=UDP, now=1.0) is None
    assert r.stats.duplicates == 1
    other = forward(r, qid=5, client=("10.0.1.10", 5353))
    assert other.query_id != fwd.query_id and r.outstanding == 2
    r.receive_upstream(UP1, response_to(fwd.data, "1.1.1.1"), now=1.1)
    assert isinstance(
        r.receive_query(query("example.com", qid=5), client=CLIENT, transport=UDP, now=2.0), Forward
    )


def test_tcp_client_is_forwarded_over_tcp():
    r = resolver()
    fwd = forward(r, transport=TCP)
    assert fwd.transport is TCP
    reply = r.receive_upstream(UP1, response_to(fwd.data, "1.1.1.1"), transport=TCP, now=0.1)
    assert reply.transport is TCP


def _big_response(data: bytes, n: int = 120) -> bytes:
    return response_to(data, *(f"10.1.{i // 200}.{i % 200 + 1}" for i in range(n)))


def test_truncated_udp_reply_is_retried_over_tcp_when_the_client_takes_more():
    r = resolver()
    fwd = forward(r, payload=4096)
    truncated = response_to(fwd.data, flags=TC)
    retry = r.receive_upstream(UP1, truncated, now=0.01)
    assert isinstance(retry, Forward) and retry.transport is TCP and retry.upstreams == (UP1,)
    assert retry.data == fwd.data and retry.query_id == fwd.query_id and r.stats.tcp_retries == 1
    assert r.receive_upstream(UP1, _big_response(fwd.data), transport=UDP, now=0.02) is None  # wants TCP now
    reply = r.receive_upstream(UP1, _big_response(fwd.data), transport=TCP, now=0.03)
    msg = parsed(reply)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 120 and len(reply.data) <= 4096


def test_tcp_answer_larger_than_the_udp_client_limit_is_cut_with_tc():
    r = resolver()
    fwd = forward(r, payload=1232)
    r.receive_upstream(UP1, response_to(fwd.data, flags=TC), now=0.01)
    reply = r.receive_upstream(UP1, _big_response(fwd.data, 300), transport=TCP, now=0.02)
    assert len(reply.data) <= 1232
    msg = parsed(reply)
    assert msg.flags & dns.flags.TC and 0 < len(msg.answer[0]) < 300 and r.stats.truncated == 1


def test_truncated_reply_passed_through_to_a_512_byte_client():
    r = resolver()
    fwd = forward(r, edns=None)
    reply = r.receive_upstream(UP1, response_to(fwd.data, flags=TC), now=0.01)
    assert isinstance(reply, Reply) and parsed(reply).flags & dns.flags.TC and r.stats.tcp_retries == 0


def test_good_udp_answer_from_another_upstream_beats_a_pending_tcp_retry():
    r = resolver()
    fwd = forward(r, payload=4096)
    assert isinstance(r.receive_upstream(UP1, response_to(fwd.data, flags=TC), now=0.01), Forward)
    reply = r.receive_upstream(UP2, response_to(fwd.data, "2.2.2.2"), now=0.02)
    assert answer_values(parsed(reply)) == ["2.2.2.2"]


def test_failed_tcp_retry_falls_back_to_the_truncated_answer():
    r = resolver(upstreams=(UP1,))
    fwd = forward(r, payload=4096)
    r.receive_upstream(UP1, response_to(fwd.data, flags=TC), now=0.01)
    reply = r.upstream_failed(fwd.query_id, UP1, now=0.02)
    assert parsed(reply).flags & dns.flags.TC and r.stats.forward_answered == 1


def test_edns0_passes_through_both_ways():
    r = resolver()
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"abcdefgh")
    fwd = forward(r, payload=3000, options=[cookie], want_dnssec=True)
    sent = dns.message.from_wire(fwd.data)
    assert sent.edns == 0 and sent.payload == 3000 and sent.ednsflags & dns.flags.DO
    assert [o.otype for o in sent.options] == [dns.edns.OptionType.COOKIE]
    upstream = dns.message.make_response(sent, our_payload=1400)
    upstream.use_edns(
        0, dns.flags.DO, 1400, options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"abcdefgh" * 2)]
    )
    reply = r.receive_upstream(UP1, upstream.to_wire(), now=0.01)
    got = parsed(reply)
    assert got.edns == 0 and got.payload == 1400 and got.ednsflags & dns.flags.DO
    assert got.options[0].otype == dns.edns.OptionType.COOKIE


def test_replies_must_match_id_upstream_and_question():
    r = resolver(upstreams=(UP1,))
    fwd = forward(r)
    other = query("evil.example.net", qid=fwd.query_id)
    assert r.receive_upstream(UP1, response_to(other, "6.6.6.6"), now=0.01) is None  # wrong question
    assert r.receive_upstream(UP2, response_to(fwd.data, "6.6.6.6"), now=0.01) is None  # not asked
    assert r.receive_upstream(UP1, fwd.data, now=0.01) is None  # a query, not a response
    assert r.receive_upstream(UP1, b"\x00", now=0.01) is None
    assert r.stats.upstream_unmatched == 4 and r.outstanding == 1
    upper = response_to(fwd.data.replace(b"example", b"EXAMPLE"), "9.9.9.9")
    reply = r.receive_upstream(UP1, upper, now=0.02)  # case may differ
    assert answer_values(parsed(reply)) == ["9.9.9.9"]


def test_question_less_formerr_from_an_upstream_counts_as_its_failure():
    r = resolver()
    fwd = forward(r)
    formerr = struct.pack("!HHHHHH", fwd.query_id, 0x8181, 0, 0, 0, 0)
    assert r.receive_upstream(UP1, formerr, now=0.01) is None
    reply = r.receive_upstream(UP2, response_to(fwd.data, "1.1.1.1"), now=0.02)
    assert answer_values(parsed(reply)) == ["1.1.1.1"] and r.stats.upstream_error_rcodes == 1


def test_upstream_ids_are_unique_among_outstanding_forwards():
    r = resolver(max_concurrent_forwards=3000)
    ids = {forward(r, f"h{i}.example.com", qid=i).query_id for i in range(2000)}
    assert len(ids) == 2000


def test_set_upstreams_applies_to_new_forwards():
    r = resolver()
    r.set_upstreams([UP_LOCAL])
    assert forward(r).upstreams == (UP_LOCAL,)
