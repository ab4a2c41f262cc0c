"""IPAM messages on NetworkDB requests, and the host an IPAM identity name spells.

Theory of operation (the "Direct messages" and "Identities" parts of ``meshnet/runtime/ipam_svc.py``):
the core's ``SendMessage``s for one destination identity and one pump travel in NetworkDB requests to
that identity's host: ``FRAME_PREFIX``, the sender's and the destination's identity names (u16 length +
UTF-8 each), then the messages as frames (u32 length + payload), each request below a byte limit
(``encode_requests``). ``decode_request`` is its exact inverse and returns None for anything that is
not IPAM's or is malformed (remote input never raises). ``identity_host`` reads the host out of an
identity name ``HOST~xxxxxxxx``. Pure functions: no trio, no I/O.

Direct messages: the core treats them as one-way datagrams with its own retries and matching, so its
``SendMessage``s become ``NetworkDB.request``s to the destination identity's host that are never
answered: the messages of one pump for one identity go in one request (``FRAME_PREFIX``, the sender's
and the destination's identity names, then length-prefixed payloads, split below ``max_request_bytes``;
over TCP above ``RELIABLE_ABOVE`` bytes). The receiver drops (and counts) a request for another identity
(``misaddressed_messages``: an earlier identity of its host, gone) or whose sender identity is not of the
sending host (``foreign_messages``), and feeds each payload to its core as from the sender identity;
the answer is a request of its own. The requester's ``RequestTimedOut`` is ignored. The prefix keeps
IPAM payloads apart from other services' requests on the same NetworkDB. (Sending: ``IpamService._emit``
in ``ipam_svc.py``; the receiver's checks: ``_on_messages`` in ``ipam_identity.py``.)
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

__all__ = [
    "FRAME_PREFIX",
    "BATCH_MARGIN",
    "RELIABLE_ABOVE",
    "encode_requests",
    "decode_request",
    "identity_host",
]

#: Marks a NetworkDB request payload as IPAM messages between two identities (``encode_requests``).
#: (``ipam\x00``/``ipam\x01``, the framings without identity names, are no longer accepted.)
FRAME_PREFIX = b"ipam\x02"
#: A batch request stays below NetworkDB's max_request_bytes (64 KiB by default) by this margin.
BATCH_MARGIN = 1024
#: IPAM messages longer than this go over TCP (a UDP datagram carries about 1,400 bytes).
RELIABLE_ABOVE = 1000
_LEN = struct.Struct(">I")
_NAME_LEN = struct.Struct(">H")
#: The suffix of an identity name (``HOST~`` + 8 hex digits of the incarnation).
_SUFFIX = re.compile(r"[0-9a-f]{8}")


def encode_requests(payloads: Sequence[bytes], max_bytes: int, *, src: str, dst: str) -> list[bytes]:
    """The NetworkDB request payloads carrying ``payloads`` (IPAM messages from identity ``src`` for
    identity ``dst``, in order): ``FRAME_PREFIX``, the two names (u16 length + UTF-8 each), then the
    messages as frames (u32 length + payload), each request at most ``max_bytes`` long. A message too
    large even alone is returned alone (NetworkDB refuses it; the caller counts it)."""
    head = FRAME_PREFIX + b"".join(_NAME_LEN.pack(len(b)) + b for b in (src.encode(), dst.encode()))
    out: list[bytes] = []
    group: list[bytes] = []
    size = len(head)
    for p in payloads:
        need = _LEN.size + len(p)
        if group and size + need > max_bytes:
            out.append(head + b"".join(group))
            group, size = [], len(head)
        group.append(_LEN.pack(len(p)) + p)
        size += need
    if group:
        out.append(head + b"".join(group))
    return out


def decode_request(data: bytes) -> tuple[str, str, list[bytes]] | None:
    """(sender identity, destination identity, IPAM messages) of a NetworkDB request payload; None if it
    is not IPAM's or is malformed."""
    if not data.startswith(FRAME_PREFIX):
        return None
    pos = len(FRAME_PREFIX)
    names = []
    for _ in range(2):
        if pos + _NAME_LEN.size > len(data):
            return None
        (n,) = _NAME_LEN.unpack_from(data, pos)
        pos += _NAME_LEN.size
        if n == 0 or pos + n > len(data):
            return None
        try:
            names.append(data[pos : pos + n].decode())
        except UnicodeDecodeError:
            return None
        pos += n
    out = []
    while pos < len(data):
        if pos + _LEN.size > len(data):
            return None
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if n == 0 or pos + n > len(data):
            return None
        out.append(data[pos : pos + n])
        pos += n
    return (names[0], names[1], out) if out else None


def identity_host(name: str) -> str:
    """The host (gossip name) an IPAM identity name spells: ``HOST~xxxxxxxx`` -> ``HOST``; any other
    name (an identity made before names carried a suffix) is its own host."""
    base, sep, suffix = name.rpartition("~")
    return base if sep and base and _SUFFIX.fullmatch(suffix) else name
