"""The fast path's wire helpers: query parsing edge cases and record-by-record truncation."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rdata
import dns.rrset
from dns_helpers import query

from meshnet.dns.names import Rr, Srv
from meshnet.dns.wire import (
    BADVERS,
    FORMERR,
    NOTIMP,
    encode_name,
    error_reply,
    parse_query,
    question_key,
    render_rr,
    truncate,
)


def _response(n_answers: int, *, edns: bool, extra_after_opt: bool = False) -> bytes:
    q = dns.message.make_query("host.example.com", "A", use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    rrset = r.find_rrset(r.answer, q.question[0].name, 1, 1, create=True)
    for i in range(n_answers):
        rrset.add(dns.rdata.from_text(1, 1, f"10.0.{i // 250}.{i % 250 + 1}"), 60)
    r.authority.append(dns.rrset.from_text("example.com.", 60, "IN", "NS", "ns1.example.com."))
    r.additional.append(dns.rrset.from_text("ns1.example.com.", 60, "IN", "A", "192.0.2.53"))
    wire = r.to_wire(max_size=65535)
    if extra_after_opt:  # move an A record behind the OPT (legal, unusual)
        wire = wire[:10] + struct.pack("!H", struct.unpack_from("!H", wire, 10)[0] + 1) + wire[12:]
        wire += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([1, 2, 3, 4])
    return wire


def test_parse_query_fields():
    data = query("Web.Frontend", "AAAA", qid=99, payload=4000)
    q = parse_query(data)
    assert (q.id, q.rcode, q.qtype, q.qclass, q.has_opt, q.payload) == (99, 0, 28, 1, True, 4000)
    assert q.question == b"\x03Web\x08Frontend\x00\x00\x1c\x00\x01"
    assert q.key == b"\x03web\x08frontend\x00\x00\x1c\x00\x01"
    assert q.udp_limit() == 4000 and not q.needs_full_parse


def test_qtype_bytes_are_not_lowercased_in_the_cache_key():
    # qtype 65 (HTTPS) is b"\x00A": lower-casing the whole question would turn it into type 97
    assert parse_query(query("x", "HTTPS")).key.endswith(b"\x00\x41\x00\x01")


def test_udp_limit_512_without_edns_and_never_below_512():
    assert parse_query(query("x", edns=None)).udp_limit() == 512
    assert parse_query(query("x", payload=100)).udp_limit() == 512


def test_parse_query_errors():
    assert parse_query(b"\x00" * 11) is None
    q = parse_query(query("x")[:-3])
    assert q.rcode == FORMERR  # OPT cut short
    opt_bad_option = query("x")[:-2] + b"\x00\x05" + b"\x00\x0a\x00\x09\x00"  # option longer than rdata
    assert parse_query(opt_bad_option).rcode == FORMERR
    assert parse_query(query("x", edns=2)).rcode == BADVERS
    iquery = bytearray(query("x"))
    iquery[2] |= 0x08
    assert parse_query(bytes(iquery)).rcode == NOTIMP
    long_name = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 63
    assert parse_query(long_name * 1).rcode == FORMERR
    too_long = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01"
    assert parse_query(too_long).rcode == FORMERR  # 321 octets > 255


def test_unusual_sections_are_left_to_dnspython():
    data = struct.pack("!HHHHHH", 1, 0, 1, 1, 0, 0) + b"\x01a\x00\x00\x01\x00\x01"
    assert parse_query(data).needs_full_parse


def test_error_reply_copies_opcode_rd_cd_and_puts_extended_rcode_in_opt():
    wire = error_reply(7, 0x0110, BADVERS, question=b"\x01a\x00\x00\x01\x00\x01", opt_payload=1232)
    msg = dns.message.from_wire(wire)
    assert msg.id == 7 and msg.rcode() == BADVERS and msg.flags & dns.flags.RD and msg.flags & dns.flags.CD


def test_render_rr_uses_the_question_pointer_and_uncompressed_targets():
    a = render_rr(Rr(1, __import__("ipaddress").ip_address("10.0.0.1")), 5)
    assert a == b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x0a\x00\x00\x01"
    srv = render_rr(Rr(33, Srv(0, 0, 80, "t.net")), 5)
    assert srv.endswith(struct.pack("!HHH", 0, 0, 80) + b"\x01t\x03net\x00")
    assert encode_name("") == b"\x00"


def test_question_key_matches_case_insensitively():
    assert question_key(query("ExAmple.com")) == question_key(query("example.COM"))
    assert question_key(b"\x00" * 12) is None


def test_truncate_keeps_whole_answers_drops_the_rest_keeps_opt_sets_tc():
    wire = _response(100, edns=True)
    cut = truncate(wire, 512)
    assert len(cut) <= 512
    msg = dns.message.from_wire(cut)
    assert msg.flags & dns.flags.TC and msg.edns == 0
    assert 20 < len(msg.answer[0]) < 100 and not msg.authority and not msg.additional


def test_truncate_within_additional_does_not_set_tc():
    wire = _response(3, edns=False)
    cut = truncate(wire, len(wire) - 5)  # only the additional A record is dropped
    msg = dns.message.from_wire(cut)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 3 and msg.authority and not msg.additional


def test_truncate_with_records_behind_the_opt_stays_well_formed():
    wire = _response(2, edns=True, extra_after_opt=True)
    cut = truncate(wire, len(wire) - 1)
    msg = dns.message.from_wire(cut)
    assert msg.edns == 0 and len(msg.answer[0]) == 2


def test_truncate_small_message_unchanged_and_garbage_cut_to_header_and_question():
    wire = _response(1, edns=False)
    assert truncate(wire, 512) is wire
    garbage = wire[:40] + b"\xff" * 600
    cut = truncate(garbage, 512)
    assert len(cut) <= 512 and cut[2] & 0x02  # TC
    msg = dns.message.from_wire(cut)
    assert msg.question[0].name.to_text() == "host.example.com." and not msg.answer
