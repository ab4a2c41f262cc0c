"""``Resolver``: one sandbox's embedded DNS server (127.0.0.11), as a pure (sans-IO) core.

Theory of operation. House rules (style.md 3.3): no sockets, clock, threads or global randomness; every
input that depends on time takes a keyword-only ``now`` (monotonic seconds); randomness (answer order,
upstream query ids) comes from the injected ``random.Random`` (inject ``random.SystemRandom()`` in the
agent, so upstream ids cannot be predicted; a seeded one in tests). Remote garbage never raises out of
``receive_*``: it is answered with an error or dropped, and always counted in ``stats``.

Inputs and outputs (the shell owns the sockets; recursion is an output, not a socket):

    receive_query(data, client=, transport=, now=)   -> Reply | Forward | None
    receive_upstream(upstream, data, transport=, now=) -> Reply | Forward | None
    upstream_failed(query_id, upstream, now=)        -> Reply | None
    handle_timer(now=)                               -> list[Reply]   (forwards past their deadline)
    next_deadline()                                  -> float | None

``Reply`` goes to the client on the transport it asked on; ``Reply.completes`` names a finished forward,
whose other upstream exchanges the shell may cancel. ``Forward`` asks the shell to send ``data`` to every
listed upstream on ``transport`` (from the host namespace when ``Upstream.is_host_loopback``, else from
the sandbox's), and to hand back replies until ``deadline_at``.

A query (RFC 1035 section 4; EDNS0 per RFC 6891) goes through these steps:

1. Parse: the fast parser (``wire.py``) handles one question with at most an OPT record; anything unusual
   goes to dnspython. Shorter than a header, or a response (QR set): dropped and counted. Unparseable
   with a header: FORMERR. Opcode other than QUERY: NOTIMP. EDNS version above 0: BADVERS.
2. Policy: class other than IN/ANY, or AXFR/IXFR: REFUSED (we are no zone server and recurse only IN).
3. Cluster names (``names.py`` says which) are answered authoritatively (AA) from the ``NameTable``:
   records, NODATA or NXDOMAIN. TTLs: ``config.ttl`` (5 s) for everything that follows a container
   (names, aliases, round-robin services, ``tasks.``, PTR, SRV), so a removed container is gone from
   client caches within 5 s; ``config.vip_ttl`` (30 s) for VIPs, which live as long as their service.
   Negative answers carry no SOA, so they are not cached (RFC 2308 section 5): a new container resolves
   at once. Multi-record answers are shuffled on every query (round robin). Rendered answers are cached
   per (name, type) until a network in the sandbox's scope changes, then patched with the query's id,
   flags and question (its case, for dns-0x20 clients); ``config.fast_path=False`` renders every answer
   with dnspython instead (the reference the fast path is tested against). Hot path: a UDP query whose
   bytes (all but the id) equal one answered before with at most one record, while the table's
   generation is unchanged, gets the same reply bytes with its id, without parsing (dnsperf-style and
   repeated stub queries; queries with random EDNS cookies never hit it and take the path above).
4. Other names are forwarded: to ALL upstreams at once, with the client's query unchanged (EDNS0 and its
   options pass through) except a fresh random id. The first NOERROR or NXDOMAIN reply wins and is
   returned at once, so a dead upstream costs nothing while another answers. SERVFAIL, REFUSED and other
   error codes do not win: the forward waits for the other upstreams, and only when every upstream has
   failed, or at the deadline (``forward_timeout``, 3 s: below the 5 s first try of glibc and dig), the
   client gets the first upstream error reply, else our SERVFAIL. A UDP reply with TC is retried over
   TCP to that upstream when the client accepts more than 512 bytes (an output ``Forward`` on TCP);
   otherwise the truncated reply is passed on and the client retries over TCP itself. Replies are
   matched by id, upstream and question (case-insensitively); anything else is counted and ignored. A
   UDP client retransmitting a query that is still being forwarded is not forwarded twice.
5. At most ``max_concurrent_forwards`` forwards are outstanding. Above it the client gets REFUSED, at
   once and counted (``stats.refused_over_limit``), never a silent drop as in libnetwork (libnetwork.md
   section 9 #16). REFUSED rather than SERVFAIL: it tells the client and the operator that this server
   declined by policy, distinct from an upstream failure, and caching resolvers may cache SERVFAIL
   (RFC 2308 section 7.1) but do not treat REFUSED as a negative answer. With no upstream configured,
   forwarded names get REFUSED too (``stats.refused_no_upstream``).
6. Size: UDP replies are cut to the client's limit (512, or its EDNS0 size) record by record with TC set
   (``wire.truncate``); TCP replies to 65535 bytes.
"""

from __future__ import annotations

import enum
import random
import struct
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from meshnet.core.clock import DeadlineHeap
from meshnet.core.errors import ConfigError

from .names import AAAA, PTR, SRV, A, NameTable, Rr, Srv, Status
from .wire import (
    AA,
    BADVERS,
    CD,
    CLASS_ANY,
    CLASS_IN,
    FORMERR,
    HEADER,
    MAX_MESSAGE,
    MIN_UDP,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    OPCODE_MASK,
    OPT,
    QR,
    RA,
    RD,
    REFUSED,
    SERVFAIL,
    TC,
    Query,
    error_reply,
    opt_record,
    parse_query,
    qname_text,
    question_key,
    render_rr,
    truncate,
)

if TYPE_CHECKING:
    import dns.message
    import dns.rdata

__all__ = ["Transport", "Upstream", "Reply", "Forward", "ResolverConfig", "ResolverStats", "Resolver"]

_NOTAUTH = 9
_POLICY_REFUSED_TYPES = frozenset({251, 252, 253, 254})  # IXFR, AXFR, MAILB, MAILA
_FORMERR_TYPES = frozenset({OPT, 249, 250})  # OPT, TKEY, TSIG are never question types
_ID = struct.Struct("!H")
_WAITING, _WAITING_TCP, _DONE = 0, 1, 2


class Transport(enum.Enum):
    """How a message travels: UDP datagrams or TCP with 2-byte length framing (done by the shell)."""

    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream server. ``is_host_loopback``: reach it from the host namespace (127.0.0.53 & co)."""

    address: str
    port: int = 53
    is_host_loopback: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``data`` to ``client`` on ``transport``. ``completes``: the forward this reply ends, if any."""

    client: Hashable
    transport: Transport
    data: bytes
    completes: int | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``data`` to each of ``upstreams`` on ``transport``; report replies until ``deadline_at``.

    ``query_id`` is also the message id in ``data``; pass it to ``upstream_failed``.
    """

    query_id: int
    upstreams: tuple[Upstream, ...]
    transport: Transport
    data: bytes
    deadline_at: float


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """Resolver settings (module docstring for the reasons behind the defaults).

    - ``ttl``: seconds, for records that follow containers (5).
    - ``vip_ttl``: seconds, for service VIPs and localhost (30).
    - ``max_concurrent_forwards``: outstanding forwards before REFUSED (1024; at most 32768, so fresh
      16-bit upstream ids are always found quickly).
    - ``forward_timeout``: seconds from a query to its SERVFAIL when no upstream answers (3.0).
    - ``edns_udp_payload``: the UDP size we advertise in OPT records (1232, the DNS flag day 2020 value).
    - ``answer_cache_size``: rendered cluster answers kept per resolver (4096; 0 disables the cache).
    - ``fast_path``: hand-rolled parsing and rendering (True); False uses dnspython for everything.
    """

    ttl: int = 5
    vip_ttl: int = 30
    max_concurrent_forwards: int = 1024
    forward_timeout: float = 3.0
    edns_udp_payload: int = 1232
    answer_cache_size: int = 4096
    fast_path: bool = True

    def __post_init__(self) -> None:
        for name in ("ttl", "vip_ttl"):
            if not 0 <= getattr(self, name) <= 2**31 - 1:
                raise ConfigError(f"dns {name} must be 0..2147483647 seconds, got {getattr(self, name)}")
        if not 1 <= self.max_concurrent_forwards <= 32768:
            raise ConfigError(
                f"dns max_concurrent_forwards must be 1..32768, got {self.max_concurrent_forwards}"
            )
        if not self.forward_timeout > 0:
            raise ConfigError(f"dns forward_timeout must be > 0 seconds, got {self.forward_timeout}")
        if not MIN_UDP <= self.edns_udp_payload <= MAX_MESSAGE:
            raise ConfigError(f"dns edns_udp_payload must be 512..65535, got {self.edns_udp_payload}")
        if self.answer_cache_size < 0:
            raise ConfigError(f"dns answer_cache_size must be >= 0, got {self.answer_cache_size}")


@dataclass(slots=True)
class ResolverStats:
    """Counters; every query ends in exactly one of the outcome counters below ``queries``."""

    queries: int = 0
    answered: int = 0  # cluster names answered locally (records, NODATA or NXDOMAIN)
    nxdomain: int = 0  # of which NXDOMAIN
    forwarded: int = 0
    duplicates: int = 0  # UDP retransmissions of a query already being forwarded (not answered twice)
    refused_over_limit: int = 0
    refused_no_upstream: int = 0
    refused_policy: int = 0  # class not IN/ANY, zone transfers
    formerr: int = 0
    notimp: int = 0
    badvers: int = 0
    notauth: int = 0  # TSIG-signed queries (we hold no keys)
    dropped_short: int = 0  # shorter than a header: nothing to answer with
    dropped_responses: int = 0  # QR set: never answer a response
    # forward outcomes and upstream traffic
    forward_answered: int = 0
    forward_failed: int = 0  # all upstreams failed or the deadline passed: error reply sent
    forward_timeouts: int = 0  # of which at the deadline
    tcp_retries: int = 0
    truncated: int = 0  # replies cut to the client's limit (local or forwarded)
    upstream_error_rcodes: int = 0
    upstream_failures: int = 0
    upstream_unmatched: int = 0  # late, unknown id, wrong upstream or question, not a response

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Entry:
    """A rendered cluster answer: rcode, answer records (wire, owner 0xC00C), additional records."""

    __slots__ = ("rcode", "answers", "groups", "additional", "resolution")

    def __init__(self, rcode: int, answers: list[bytes], additional: list[bytes], resolution) -> None:
        self.rcode = rcode
        self.answers = answers
        self.groups: list[list[bytes]] | None = None  # per-type runs when several types (ANY), else None
        self.additional = additional
        self.resolution = resolution


_FORWARD_ENTRY = _Entry(-1, [], [], None)


class _Pending:
    __slots__ = (
        "query_id",
        "client",
        "transport",
        "client_id",
        "client_flags",
        "question",
        "key",
        "has_opt",
        "limit",
        "states",
        "fallback",
        "fallback_rank",
        "dup_key",
        "data",
        "deadline_at",
    )


class Resolver:
    """The embedded DNS server of one sandbox: answers cluster names, forwards the rest (module docstring).

    ``table`` is shared by all resolvers of an agent; ``scope`` the sandbox's network ids in order of
    preference; ``upstreams`` the servers to forward to.
    """

    def __init__(
        self,
        table: NameTable,
        config: ResolverConfig | None = None,
        *,
        rng: random.Random,
        scope: Sequence[str] = (),
        upstreams: Iterable[Upstream] = (),
    ) -> None:
        self._table = table
        self._config = config or ResolverConfig()
        self._rng = rng
        self._scope: tuple[str, ...] = tuple(scope)
        self._upstreams: tuple[Upstream, ...] = tuple(dict.fromkeys(upstreams))
        self._cache: dict[bytes, _Entry] = {}
        #: Whole UDP replies (without their id) by whole query (without its id): the hot path.
        self._hot: dict[bytes, tuple[bytes, bool]] = {}
        self._seen_generation = -1
        self._scoped_generations: tuple[int, ...] | None = None
        self._pending: dict[int, _Pending] = {}
        self._by_client: dict[tuple, int] = {}
        self._timers = DeadlineHeap()
        self._opt = opt_record(self._config.edns_udp_payload)
        self.stats = ResolverStats()

    # ---------------------------------------------------------------- configuration

    @property
    def config(self) -> ResolverConfig:
        return self._config

    @property
    def scope(self) -> tuple[str, ...]:
        """The sandbox's networks (ids), in the order names are looked up."""
        return self._scope

    def set_scope(self, scope: Sequence[str]) -> None:
        """The sandbox joined or left networks; cached answers are dropped."""
        self._scope = tuple(scope)
        self._cache.clear()
        self._hot.clear()
        self._seen_generation = -1
        self._scoped_generations = None

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def set_upstreams(self, upstreams: Iterable[Upstream]) -> None:
        """Replace the upstream servers; forwards already sent keep theirs."""
        self._upstreams = tuple(dict.fromkeys(upstreams))
        self._hot.clear()  # the RA flag of cached replies follows the upstreams

    @property
    def outstanding(self) -> int:
        """Forwards waiting for an upstream answer."""
        return len(self._pending)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next be called (the earliest forward deadline), or None."""
        return self._timers.next_deadline()

    # ---------------------------------------------------------------- inputs

    def receive_query(
        self, data: bytes, *, client: Hashable, transport: Transport, now: float
    ) -> Reply | Forward | None:
        """A client's query (one UDP datagram, or one TCP message without its length prefix).

        Returns the reply, a forward for the shell to send, or None (dropped or duplicate; counted).
        """
        stats = self.stats
        stats.queries += 1
        hot = self._hot.get(data[2:]) if transport is Transport.UDP else None
        if hot is not None and self._table.generation == self._seen_generation:
            # The same query bytes (but the id) as one answered before, and no table change since:
            # the same reply bytes, patched with this query's id (single-record or empty answers only,
            # so there is no order to shuffle).
            stats.answered += 1
            if hot[1]:
                stats.nxdomain += 1
            return Reply(client, transport, data[:2] + hot[0])
        q = parse_query(data)
        if q is None:
            stats.dropped_short += 1
            return None
        if q.is_response:
            stats.dropped_responses += 1
            return None
        if q.needs_full_parse or not self._config.fast_path:
            return self._receive_full(data, q, client, transport, now)
        if q.rcode:
            return self._error(q, q.rcode, client, transport)
        return self._handle(q, data, client, transport, now, None)

    def receive_upstream(
        self, upstream: Upstream, data: bytes, *, transport: Transport = Transport.UDP, now: float
    ) -> Reply | Forward | None:
        """A reply from ``upstream`` (matched by its id and question); see the module docstring, step 4."""
        stats = self.stats
        if len(data) < 12:
            stats.upstream_unmatched += 1
            return None
        wire_id, flags, qdcount = HEADER.unpack_from(data)[:3]
        pending = self._pending.get(wire_id)
        state = pending.states.get(upstream) if pending is not None else None
        if state is None or state == _DONE or not flags & QR or flags & OPCODE_MASK:
            stats.upstream_unmatched += 1
            return None
        if state == _WAITING_TCP and transport is not Transport.TCP:
            stats.upstream_unmatched += 1
            return None
        rcode = flags & 0xF
        good = rcode in (NOERROR, NXDOMAIN)
        if question_key(data) != pending.key:
            if qdcount == 0 and not good:
                # An upstream that rejects the query outright may leave the question out (FORMERR).
                pending.states[upstream] = _DONE
                stats.upstream_error_rcodes += 1
                return self._maybe_finish(pending)
            stats.upstream_unmatched += 1
            return None
        if not good:
            pending.states[upstream] = _DONE
            stats.upstream_error_rcodes += 1
            if pending.fallback_rank < 1:
                pending.fallback, pending.fallback_rank = data, 1
            return self._maybe_finish(pending)
        if flags & TC and transport is Transport.UDP and pending.limit > MIN_UDP:
            # The client takes more than this upstream sent: ask it again over TCP.
            pending.states[upstream] = _WAITING_TCP
            if pending.fallback_rank < 2:
                pending.fallback, pending.fallback_rank = data, 2
            stats.tcp_retries += 1
            return Forward(pending.query_id, (upstream,), Transport.TCP, pending.data, pending.deadline_at)
        stats.forward_answered += 1
        return self._finish(pending, data)

    def upstream_failed(self, query_id: int, upstream: Upstream, *, now: float) -> Reply | None:
        """The shell could not reach ``upstream`` for forward ``query_id`` (socket error, refused, reset)."""
        pending = self._pending.get(query_id)
        if pending is None or pending.states.get(upstream, _DONE) == _DONE:
            return None
        pending.states[upstream] = _DONE
        self.stats.upstream_failures += 1
        return self._maybe_finish(pending)

    def handle_timer(self, *, now: float) -> list[Reply]:
        """Fire every forward deadline <= ``now``: each gets its best upstream reply or SERVFAIL."""
        replies = []
        for query_id in self._timers.pop_due(now):
            pending = self._pending.get(query_id)
            if pending is not None:
                self.stats.forward_timeouts += 1
                replies.append(self._give_up(pending))
        return replies

    # ---------------------------------------------------------------- queries

    def _receive_full(self, data: bytes, fast: Query, client: Hashable, transport: Transport, now: float):
        """The reference path: dnspython parses the query (and renders its answer in ``_render_full``).

        ``fast`` is what the fast parser read: its question goes into error replies when dnspython fails.
        """
        query_id, flags = fast.id, fast.flags
        # dnspython (about 12 MB of RSS) is imported on the first query the fast path hands over, so an
        # agent whose resolvers never see one (or that serves no sandbox) never loads it.
        import dns.message

        try:
            msg = dns.message.from_wire(data)
        except dns.message.UnknownTSIGKey:
            self.stats.notauth += 1
            return Reply(client, transport, error_reply(query_id, flags, _NOTAUTH, question=fast.question))
        except Exception:  # noqa: BLE001 - remote garbage: any decoder failure is a format error
            self.stats.formerr += 1
            return Reply(client, transport, error_reply(query_id, flags, FORMERR, question=fast.question))
        q = Query(query_id, flags)
        if len(msg.question) == 1:
            rrset = msg.question[0]
            qname = rrset.name.to_wire()
            tail = struct.pack("!HH", rrset.rdtype, rrset.rdclass)
            q.question, q.key, q.qname_end = qname + tail, qname.lower() + tail, 12 + len(qname)
            q.qtype, q.qclass = int(rrset.rdtype), int(rrset.rdclass)
        q.has_opt = msg.edns >= 0
        q.payload = msg.payload if q.has_opt else 0
        if flags & OPCODE_MASK:
            return self._error(q, NOTIMP, client, transport)
        if len(msg.question) != 1:
            return self._error(q, FORMERR, client, transport)
        if msg.edns > 0:
            return self._error(q, BADVERS, client, transport)
        return self._handle(q, data, client, transport, now, msg)

    def _handle(self, q: Query, data: bytes, client: Hashable, transport: Transport, now: float, msg):
        """Policy, then a local answer or a forward. ``msg``: dnspython's parse (render with it), or None."""
        if (q.qclass != CLASS_IN and q.qclass != CLASS_ANY) or q.qtype in _POLICY_REFUSED_TYPES:
            self.stats.refused_policy += 1
            return Reply(client, transport, self._error_wire(q, REFUSED))
        if q.qtype in _FORMERR_TYPES:
            return self._error(q, FORMERR, client, transport)
        entry = self._lookup(q, data if msg is None else bytes(12) + q.question)
        if entry is _FORWARD_ENTRY:
            return self._forward(q, data, client, transport, now)
        stats = self.stats
        stats.answered += 1
        if entry.rcode == NXDOMAIN:
            stats.nxdomain += 1
        wire = self._render_fast(entry, q) if msg is None else self._render_full(entry, msg)
        limit = MAX_MESSAGE if transport is Transport.TCP else q.udp_limit()
        if len(wire) > limit:
            wire = truncate(wire, limit)
            stats.truncated += 1
        elif (
            msg is None
            and transport is Transport.UDP
            and entry.groups is None
            and len(entry.answers) <= 1
            and self._config.answer_cache_size
        ):
            if len(self._hot) >= self._config.answer_cache_size:
                self._hot.clear()
            self._hot[data[2:]] = (wire[2:], entry.rcode == NXDOMAIN)
        return Reply(client, transport, wire)

    def _lookup(self, q: Query, name_buf: bytes) -> _Entry:
        """The cached answer for the question; ``name_buf`` holds the question's name at offset 12."""
        table = self._table
        if table.generation != self._seen_generation:
            self._seen_generation = table.generation
            scoped = tuple(table.network_generation(n) for n in self._scope)
            if scoped != self._scoped_generations:
                self._scoped_generations = scoped
                self._cache.clear()
                self._hot.clear()
        entry = self._cache.get(q.key)
        if entry is not None:
            return entry
        name = qname_text(name_buf)
        if name is None:
            entry = _FORWARD_ENTRY
        else:
            resolution = table.resolve(name, q.qtype, self._scope)
            entry = self._entry(resolution)
        if self._config.answer_cache_size:
            if len(self._cache) >= self._config.answer_cache_size:
                self._cache.clear()
                self._hot.clear()
            self._cache[q.key] = entry
        return entry

    def _entry(self, resolution) -> _Entry:
        if resolution.status is Status.FORWARD:
            return _FORWARD_ENTRY
        if resolution.status is Status.NXDOMAIN:
            return _Entry(NXDOMAIN, [], [], resolution)
        cfg = self._config
        by_type: dict[int, list[bytes]] = {}
        for rr in resolution.answer:
            by_type.setdefault(rr.rtype, []).append(render_rr(rr, cfg.vip_ttl if rr.is_stable else cfg.ttl))
        extra = [render_rr(rr, cfg.vip_ttl if rr.is_stable else cfg.ttl) for rr in resolution.additional]
        entry = _Entry(NOERROR, [b for group in by_type.values() for b in group], extra, resolution)
        if len(by_type) > 1:  # keep each RRset contiguous; shuffle within it
            entry.groups = list(by_type.values())
        return entry

    def _render_fast(self, entry: _Entry, q: Query) -> bytes:
        answers = entry.answers
        if entry.groups is not None:
            answers = []
            for group in entry.groups:
                group = group.copy()
                self._rng.shuffle(group)
                answers.extend(group)
        elif len(answers) > 1:
            answers = answers.copy()
            self._rng.shuffle(answers)
        flags = QR | AA | (q.flags & (RD | CD)) | (RA if self._upstreams else 0) | entry.rcode
        opt = self._opt if q.has_opt else b""
        extra = entry.additional
        head = HEADER.pack(q.id, flags, 1, len(answers), 0, len(extra) + (1 if opt else 0))
        return b"".join((head, q.question, *answers, *extra, opt))

    def _render_full(self, entry: _Entry, msg: dns.message.Message) -> bytes:
        import dns.flags  # loaded with dns.message by _receive_full, the only caller
        import dns.name
        import dns.rdataclass

        cfg = self._config
        resp = dns.message.make_response(
            msg, recursion_available=bool(self._upstreams), our_payload=cfg.edns_udp_payload
        )
        resp.flags |= dns.flags.AA | (msg.flags & dns.flags.CD)
        resp.set_rcode(entry.rcode)
        qname = msg.question[0].name
        answer = list(entry.resolution.answer) if entry.rcode == NOERROR else []
        if len(answer) > 1:
            self._rng.shuffle(answer)
        for section, rrs in ((resp.answer, answer), (resp.additional, entry.resolution.additional)):
            for rr in rrs:
                owner = qname if rr.owner is None else dns.name.from_text(rr.owner)
                rrset = resp.find_rrset(section, owner, dns.rdataclass.IN, rr.rtype, create=True)
                rrset.add(_rdata(rr), cfg.vip_ttl if rr.is_stable else cfg.ttl)
        return resp.to_wire(max_size=MAX_MESSAGE, prefer_truncation=True)

    def _error(self, q: Query, rcode: int, client: Hashable, transport: Transport) -> Reply:
        stats = self.stats
        if rcode == FORMERR:
            stats.formerr += 1
        elif rcode == NOTIMP:
            stats.notimp += 1
        elif rcode == BADVERS:
            stats.badvers += 1
        return Reply(client, transport, self._error_wire(q, rcode))

    def _error_wire(self, q: Query, rcode: int) -> bytes:
        payload = self._config.edns_udp_payload if q.has_opt or rcode == BADVERS else 0
        return error_reply(
            q.id, q.flags, rcode, question=q.question, opt_payload=payload, ra=bool(self._upstreams)
        )

    # ---------------------------------------------------------------- forwarding

    def _forward(self, q: Query, data: bytes, client: Hashable, transport: Transport, now: float):
        stats = self.stats
        if not self._upstreams:
            stats.refused_no_upstream += 1
            return Reply(client, transport, self._error_wire(q, REFUSED))
        dup_key = (client, q.id, q.key) if transport is Transport.UDP else None
        if dup_key is not None and dup_key in self._by_client:
            stats.duplicates += 1
            return None
        if len(self._pending) >= self._config.max_concurrent_forwards:
            stats.refused_over_limit += 1
            return Reply(client, transport, self._error_wire(q, REFUSED))
        query_id = self._rng.getrandbits(16)
        while query_id in self._pending:
            query_id = self._rng.getrandbits(16)
        p = _Pending()
        p.query_id = query_id
        p.client, p.transport, p.client_id, p.client_flags = client, transport, q.id, q.flags
        p.question, p.key, p.has_opt = q.question, q.key, q.has_opt
        p.limit = MAX_MESSAGE if transport is Transport.TCP else q.udp_limit()
        p.states = dict.fromkeys(self._upstreams, _WAITING)
        p.fallback, p.fallback_rank = b"", 0
        p.dup_key = dup_key
        p.data = _ID.pack(query_id) + data[2:]
        p.deadline_at = now + self._config.forward_timeout
        self._pending[query_id] = p
        if dup_key is not None:
            self._by_client[dup_key] = query_id
        self._timers.set(query_id, p.deadline_at)
        stats.forwarded += 1
        return Forward(query_id, self._upstreams, transport, p.data, p.deadline_at)

    def _maybe_finish(self, pending: _Pending) -> Reply | None:
        if any(state != _DONE for state in pending.states.values()):
            return None
        return self._give_up(pending)

    def _give_up(self, pending: _Pending) -> Reply:
        if pending.fallback_rank == 2:  # a truncated good answer: the client retries over TCP itself
            self.stats.forward_answered += 1
            return self._finish(pending, pending.fallback)
        self.stats.forward_failed += 1
        if pending.fallback_rank == 1:
            return self._finish(pending, pending.fallback)
        payload = self._config.edns_udp_payload if pending.has_opt else 0
        wire = error_reply(
            pending.client_id,
            pending.client_flags,
            SERVFAIL,
            question=pending.question,
            opt_payload=payload,
            ra=True,
        )
        return self._finish(pending, wire)

    def _finish(self, pending: _Pending, response: bytes) -> Reply:
        del self._pending[pending.query_id]
        self._timers.cancel(pending.query_id)
        if pending.dup_key is not None:
            self._by_client.pop(pending.dup_key, None)
        wire = _ID.pack(pending.client_id) + response[2:]
        if len(wire) > pending.limit:
            wire = truncate(wire, pending.limit)
            self.stats.truncated += 1
        return Reply(pending.client, pending.transport, wire, completes=pending.query_id)


def _rdata(rr: Rr) -> dns.rdata.Rdata:
    import dns.rdata  # loaded with dns.message by _receive_full
    import dns.rdataclass

    rdclass = dns.rdataclass.IN
    value = rr.value
    if rr.rtype in (A, AAAA):
        return dns.rdata.from_text(rdclass, rr.rtype, str(value))
    if rr.rtype == PTR:
        return dns.rdata.from_text(rdclass, PTR, f"{value}.")
    assert isinstance(value, Srv) and rr.rtype == SRV
    return dns.rdata.from_text(rdclass, SRV, f"{value.priority} {value.weight} {value.port} {value.target}.")
