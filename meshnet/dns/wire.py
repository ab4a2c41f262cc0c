"""Hand-rolled DNS wire helpers for the resolver's fast path: query parsing, record rendering, truncation.

Theory of operation. dnspython parses and renders about 3,000 queries/s on this machine
(environment.md section 4; ``bench/dns_core.py``), too slow to answer every cluster name, so the common
case is done here with ``struct`` and byte slices, following RFC 1035 section 4 (header, question and
resource record layout, 4.1.1-4.1.4 for the flags and name compression) and RFC 6891 (the OPT
pseudo-record: class = the requestor's UDP payload size, TTL = extended RCODE, version and DO flag).
Everything unusual is left to dnspython (``Query.needs_full_parse``): answer or authority records in a
query, more than one additional record, an additional record that is not a root-owned OPT (TSIG).

Rules this module keeps:

- A query is parsed only as far as needed: header, exactly one question (names without compression
  pointers: at offset 12 a pointer can only point back into the header, so it is malformed), and an
  optional OPT record whose options are well framed. Garbage gives ``Query.rcode = FORMERR``; a buffer
  shorter than a header gives None (nothing to answer with).
- Answer records own the question's name through the pointer 0xC00C (the question starts at offset 12),
  so the answer carries the case the client asked with (dns-0x20 clients check it) and renders the same
  for every query of the same name. Additional records and record data use uncompressed names
  (RFC 2782: an SRV target is never compressed), so answer records can be shuffled freely.
- ``truncate`` cuts any message (ours or an upstream's) to a size limit record by record, keeping a
  prefix of the message so that every compression pointer still points at kept bytes; it sets TC when
  it had to cut the answer or authority section (RFC 2181 section 9: not for the additional section) and
  keeps the OPT record (RFC 6891 section 7).
"""

from __future__ import annotations

import struct

from .names import AAAA, PTR, SRV, A, Rr, Srv, normalize_name

__all__ = [
    "HEADER",
    "Query",
    "parse_query",
    "question_key",
    "error_reply",
    "opt_record",
    "encode_name",
    "render_rr",
    "truncate",
    "qname_text",
]

HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_HH = struct.Struct("!HH")

QR, OPCODE_MASK, AA, TC, RD, RA, AD, CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
OPT, CLASS_IN, CLASS_ANY = 41, 1, 255
MAX_MESSAGE = 65535
MIN_UDP = 512


class Query:
    """A query as far as the fast path parsed it.

    ``rcode`` is 0 for a well-formed query, else the error to answer with (FORMERR, NOTIMP, BADVERS).
    ``question`` is the question section exactly as received (name, type, class); ``key`` the same with
    the name lower-cased (the answer-cache key); ``qname_end`` where the name ends. ``payload`` is the
    requestor's EDNS0 UDP size (0 without OPT). ``needs_full_parse``: well framed so far but unusual,
    hand it to dnspython.
    """

    __slots__ = (
        "id",
        "flags",
        "rcode",
        "question",
        "key",
        "qname_end",
        "qtype",
        "qclass",
        "has_opt",
        "payload",
        "is_response",
        "needs_full_parse",
    )

    def __init__(self, query_id: int, flags: int) -> None:
        self.id = query_id
        self.flags = flags
        self.rcode = NOERROR
        self.question = b""
        self.key = b""
        self.qname_end = 0
        self.qtype = 0
        self.qclass = 0
        self.has_opt = False
        self.payload = 0
        self.is_response = bool(flags & QR)
        self.needs_full_parse = False

    def udp_limit(self) -> int:
        """The largest UDP reply the client accepts: its EDNS0 size, never below 512 (RFC 6891 6.2.5)."""
        return min(max(MIN_UDP, self.payload), MAX_MESSAGE) if self.has_opt else MIN_UDP


def _walk_name(data: bytes, off: int) -> int:
    """End offset of an uncompressed name at ``off``; ValueError when malformed or over 255 octets."""
    start = off
    while True:
        length = data[off]  # IndexError past the end
        if length == 0:
            off += 1
            if off - start > 255:
                raise ValueError("name longer than 255 octets")
            return off
        if length > 63:
            raise ValueError("compression pointer or reserved label type in a question")
        off += 1 + length
        if off >= len(data):
            raise ValueError("name runs past the message")


def parse_query(data: bytes) -> Query | None:
    """Parse a query (RFC 1035 4.1); None when shorter than a header. Never raises."""
    if len(data) < 12:
        return None
    query_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    q = Query(query_id, flags)
    if q.is_response:
        return q
    end = len(data)
    if qdcount != 1:
        q.rcode = FORMERR
        return q
    try:
        name_end = _walk_name(data, 12)
    except (ValueError, IndexError):
        q.rcode = FORMERR
        return q
    off = name_end + 4
    if off > end:
        q.rcode = FORMERR
        return q
    q.qname_end = name_end
    q.question = data[12:off]
    q.key = data[12:name_end].lower() + data[name_end:off]
    q.qtype, q.qclass = _HH.unpack_from(data, name_end)
    if flags & OPCODE_MASK:
        q.rcode = NOTIMP
        return q
    if ancount or nscount or arcount > 1:
        q.needs_full_parse = True
        return q
    if arcount == 1:
        if off + 11 > end:  # no record fits: even a root-owned one needs 11 octets
            q.rcode = FORMERR
            return q
        if data[off] != 0:
            q.needs_full_parse = True
            return q
        rtype, payload, ttl, rdlen = _RR_FIXED.unpack_from(data, off + 1)
        if rtype != OPT:
            q.needs_full_parse = True
            return q
        opt_end = off + 11 + rdlen
        if opt_end != end:
            q.rcode = FORMERR
            return q
        pos = off + 11
        while pos < opt_end:
            if pos + 4 > opt_end:
                q.rcode = FORMERR
                return q
            pos += 4 + _HH.unpack_from(data, pos)[1]
        if pos != opt_end:
            q.rcode = FORMERR
            return q
        q.has_opt = True
        q.payload = payload
        if (ttl >> 16) & 0xFF:
            q.rcode = BADVERS
        return q
    if off != end:
        q.rcode = FORMERR
    return q


def qname_text(data: bytes) -> str | None:
    """The name at offset 12 of a parsed message, normalized; None when it cannot be a table name.

    Table names are printable ASCII without dots inside labels; any other label (binary, or an escaped
    dot) cannot match, so such names are forwarded.
    """
    labels = []
    off = 12
    while True:
        length = data[off]
        if length == 0:
            break
        label = data[off + 1 : off + 1 + length]
        if b"." in label:
            return None
        labels.append(label)
        off += 1 + length
    if not labels:
        return ""
    try:
        text = b".".join(labels).decode("ascii")
    except UnicodeDecodeError:
        return None
    return normalize_name(text)


def question_key(data: bytes) -> bytes | None:
    """The lower-cased question of a one-question message (for matching upstream replies), or None."""
    if len(data) < 12 or HEADER.unpack_from(data)[2] != 1:
        return None
    try:
        name_end = _walk_name(data, 12)
    except (ValueError, IndexError):
        return None
    if name_end + 4 > len(data):
        return None
    return data[12:name_end].lower() + data[name_end : name_end + 4]


def opt_record(payload: int, ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-record (RFC 6891 6.1.2): version 0, DO clear, no options."""
    return b"\x00" + _RR_FIXED.pack(OPT, payload, (ext_rcode & 0xFF) << 24, 0)


def error_reply(
    query_id: int, flags: int, rcode: int, *, question: bytes = b"", opt_payload: int = 0, ra: bool = False
) -> bytes:
    """A response carrying only ``rcode`` (and the question, and an OPT when ``opt_payload``).

    Copies the query's opcode, RD and CD (RFC 1035 4.1.1, RFC 6840 5.9). Extended RCODEs (BADVERS) go
    into the OPT record, so pass ``opt_payload`` with them.
    """
    out_flags = QR | (flags & (OPCODE_MASK | RD | CD)) | (RA if ra else 0) | (rcode & 0xF)
    opt = opt_record(opt_payload, rcode >> 4) if opt_payload else b""
    head = HEADER.pack(query_id, out_flags, 1 if question else 0, 0, 0, 1 if opt else 0)
    return head + question + opt


def encode_name(name: str) -> bytes:
    """Uncompressed wire form of a normalized name (no trailing dot); ValueError when invalid."""
    if not name:
        return b"\x00"
    parts = []
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"bad label in {name!r}")
        parts.append(bytes((len(raw),)) + raw)
    wire = b"".join(parts) + b"\x00"
    if len(wire) > 255:
        raise ValueError(f"name longer than 255 octets: {name!r}")
    return wire


def render_rr(rr: Rr, ttl: int) -> bytes:
    """One record, class IN: owner 0xC00C (the question's name) when ``rr.owner`` is None."""
    owner = b"\xc0\x0c" if rr.owner is None else encode_name(rr.owner)
    value = rr.value
    if rr.rtype in (A, AAAA):
        rdata = value.packed  # type: ignore[union-attr]
    elif rr.rtype == PTR:
        rdata = encode_name(value)  # type: ignore[arg-type]
    elif rr.rtype == SRV:
        assert isinstance(value, Srv)
        rdata = struct.pack("!HHH", value.priority, value.weight, value.port) + encode_name(value.target)
    else:
        raise ValueError(f"cannot render type {rr.rtype}")
    return owner + _RR_FIXED.pack(rr.rtype, CLASS_IN, ttl, len(rdata)) + rdata


def _skip_any_name(data: bytes, off: int) -> int:
    """End offset of a possibly compressed name; ValueError/IndexError when malformed."""
    for _ in range(128):
        length = data[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            if off + 2 > len(data):
                raise ValueError("pointer runs past the message")
            return off + 2
        if length & 0xC0:
            raise ValueError("reserved label type")
        off += 1 + length
    raise ValueError("too many labels")


def truncate(wire: bytes, limit: int) -> bytes:
    """``wire`` cut to at most ``limit`` bytes record by record (module docstring); never raises.

    A message whose records cannot be walked is cut to its header and question with TC set.
    """
    if len(wire) <= limit:
        return wire
    if len(wire) < 12:
        return wire
    query_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    end = len(wire)
    off = 12
    try:
        for _ in range(qdcount):
            off = _skip_any_name(wire, off) + 4
            if off > end:
                raise ValueError("question runs past the message")
        q_end = off
    except (ValueError, IndexError):
        return HEADER.pack(query_id, flags | TC, 0, 0, 0, 0)
    spans: list[tuple[int, int, int, bool]] = []
    try:
        for section, count in ((0, ancount), (1, nscount), (2, arcount)):
            for _ in range(count):
                start = off
                off = _skip_any_name(wire, off)
                if off + 10 > end:
                    raise ValueError("record runs past the message")
                rtype, _, _, rdlen = _RR_FIXED.unpack_from(wire, off)
                off += 10 + rdlen
                if off > end:
                    raise ValueError("record data runs past the message")
                spans.append((section, start, off, section == 2 and rtype == OPT))
    except (ValueError, IndexError):
        if q_end > limit:
            return HEADER.pack(query_id, flags | TC, 0, 0, 0, 0)
        return HEADER.pack(query_id, flags | TC, qdcount, 0, 0, 0) + wire[12:q_end]
    opt = b""
    for _section, start, stop, is_opt in spans:
        if is_opt:
            opt = wire[start:stop]
            break
    budget = limit - len(opt)
    counts = [0, 0, 0]
    kept_end = q_end
    cut_section = None
    for section, _start, stop, is_opt in spans:
        # Stop at the OPT record: it is re-appended at the end, and records after it may point at it.
        if is_opt:
            break
        if stop > budget:
            cut_section = section
            break
        counts[section] += 1
        kept_end = stop
    if q_end > budget:
        return HEADER.pack(query_id, flags | TC, 0, 0, 0, 0)
    if cut_section is not None and cut_section < 2:
        flags |= TC
    head = HEADER.pack(query_id, flags, qdcount, counts[0], counts[1], counts[2] + (1 if opt else 0))
    return head + wire[12:kept_end] + opt
