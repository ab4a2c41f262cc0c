"""IPAM direct messages (ipam.md 3.5, 3.9) and their codec.

Theory of operation. IPAM talks to one node at a time through NetworkDB's direct messages; the core
treats them as unreliable one-way datagrams (lost, duplicated, reordered) and does its own matching
(``rid``, chosen by the asker) and retries, so every handler is idempotent:

    SpaceRequest   asker -> owner   want a block (tag "") or an address for holder tag; offset >= 0 for a
                                    static address
    SpaceGrant     owner -> asker   block k of the space at epoch, with the manifest of live allocations
                                    (empty for request-driven grants); also resent by the donor and
                                    relayed by anyone whose view shows it unconfirmed
    AddressGrant   owner -> asker   a proxy allocation: offset allocated on the asker's behalf
    SpaceDenied    owner -> asker   reason exhausted | not_owner | in_use | retired, with the owner's free count
    Release        holder -> owner  free offset (or, with offset -1, whatever the owner holds for the tag)
    ReleaseAck     owner -> holder  done | not_owner
    ReclaimIntent  reclaimer -> every other member: fence these blocks at these epochs (reclaim.py)
    ReclaimReply   member -> reclaimer: acks (fenced), nacks (with a reason) and the holdings the
                                    member knows in those blocks (addresses it got by proxy; VNIs and
                                    pool subnets of the networks it knows)

Wire form: ``msgpack [version, kind, sender, cluster_id, *body]``. ``decode`` validates every field and
raises only ``DecodeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from meshnet.core.errors import DecodeError

from .records import decode_used

__all__ = [
    "Kind",
    "SpaceRequest",
    "SpaceGrant",
    "AddressGrant",
    "SpaceDenied",
    "Release",
    "ReleaseAck",
    "ReclaimIntent",
    "ReclaimReply",
    "Message",
    "Envelope",
    "encode",
    "decode",
]

VERSION = 1
_MAX_ID = 2**63


class Kind(IntEnum):
    """Message codes: append-only, never renumbered."""

    SPACE_REQUEST = 1
    SPACE_GRANT = 2
    ADDRESS_GRANT = 3
    SPACE_DENIED = 4
    RELEASE = 5
    RELEASE_ACK = 6
    RECLAIM_INTENT = 7
    RECLAIM_REPLY = 8


@dataclass(frozen=True, slots=True)
class SpaceRequest:
    rid: int
    scope: str
    space: str
    tag: str  # "" = a block only
    offset: int  # -1 = dynamic


@dataclass(frozen=True, slots=True)
class SpaceGrant:
    rid: int
    scope: str
    space: str
    k: int
    epoch: int
    donor: str
    manifest: tuple[tuple[int, str, str], ...]


@dataclass(frozen=True, slots=True)
class AddressGrant:
    rid: int
    scope: str
    space: str
    offset: int
    tag: str


@dataclass(frozen=True, slots=True)
class SpaceDenied:
    rid: int
    scope: str
    space: str
    reason: str
    free: int


@dataclass(frozen=True, slots=True)
class Release:
    rid: int
    scope: str
    space: str
    offset: int  # -1 = whatever is held for tag
    tag: str


@dataclass(frozen=True, slots=True)
class ReleaseAck:
    rid: int
    status: str


@dataclass(frozen=True, slots=True)
class ReclaimIntent:
    rid: int
    targets: tuple[str, ...]
    scope: str
    space: str
    proposals: tuple[tuple[int, int], ...]  # (k, epoch)


@dataclass(frozen=True, slots=True)
class ReclaimReply:
    rid: int
    scope: str
    space: str
    acks: tuple[int, ...]
    nacks: tuple[tuple[int, str], ...]
    holdings: tuple[tuple[int, str, str], ...]  # (offset, holder node, tag) known to the replier


Message = (
    SpaceRequest
    | SpaceGrant
    | AddressGrant
    | SpaceDenied
    | Release
    | ReleaseAck
    | ReclaimIntent
    | ReclaimReply
)

_KIND = {
    SpaceRequest: Kind.SPACE_REQUEST,
    SpaceGrant: Kind.SPACE_GRANT,
    AddressGrant: Kind.ADDRESS_GRANT,
    SpaceDenied: Kind.SPACE_DENIED,
    Release: Kind.RELEASE,
    ReleaseAck: Kind.RELEASE_ACK,
    ReclaimIntent: Kind.RECLAIM_INTENT,
    ReclaimReply: Kind.RECLAIM_REPLY,
}


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    cluster_id: str
    body: Message


def _body(m: Message) -> list[Any]:
    if isinstance(m, SpaceRequest):
        return [m.rid, m.scope, m.space, m.tag, m.offset]
    if isinstance(m, SpaceGrant):
        return [m.rid, m.scope, m.space, m.k, m.epoch, m.donor, [list(u) for u in m.manifest]]
    if isinstance(m, AddressGrant):
        return [m.rid, m.scope, m.space, m.offset, m.tag]
    if isinstance(m, SpaceDenied):
        return [m.rid, m.scope, m.space, m.reason, m.free]
    if isinstance(m, Release):
        return [m.rid, m.scope, m.space, m.offset, m.tag]
    if isinstance(m, ReleaseAck):
        return [m.rid, m.status]
    if isinstance(m, ReclaimIntent):
        return [m.rid, list(m.targets), m.scope, m.space, [list(p) for p in m.proposals]]
    return [m.rid, m.scope, m.space, list(m.acks), [list(n) for n in m.nacks], [list(h) for h in m.holdings]]


def encode(env: Envelope) -> bytes:
    """Bytes for NetworkDB's direct message."""
    return msgpack.packb([VERSION, int(_KIND[type(env.body)]), env.sender, env.cluster_id, *_body(env.body)],
                         use_bin_type=True)  # fmt: skip


def _i(v: Any, lo: int = 0, hi: int = 2**64) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v < hi:
        raise DecodeError("bad integer field")
    return v


def _s(v: Any, *, empty: bool = True) -> str:
    if not isinstance(v, str) or len(v) > 512 or (not empty and not v):
        raise DecodeError("bad string field")
    return v


def _l(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise DecodeError("bad list field")
    return v


def _pairs(v: Any, second: Any) -> tuple[tuple[Any, Any], ...]:
    out = []
    for p in _l(v):
        if not isinstance(p, list) or len(p) != 2:
            raise DecodeError("bad pair")
        out.append((_i(p[0]), second(p[1])))
    return tuple(out)


_ARITY = {
    Kind.SPACE_REQUEST: 5,
    Kind.SPACE_GRANT: 7,
    Kind.ADDRESS_GRANT: 5,
    Kind.SPACE_DENIED: 5,
    Kind.RELEASE: 5,
    Kind.RELEASE_ACK: 2,
    Kind.RECLAIM_INTENT: 5,
    Kind.RECLAIM_REPLY: 6,
}


def decode(data: bytes) -> Envelope:
    """The envelope in ``data``; ``DecodeError`` for anything malformed."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types; all are garbage here
        raise DecodeError(f"not msgpack: {exc}") from exc
    if not isinstance(obj, list) or len(obj) < 4 or obj[0] != VERSION:
        raise DecodeError("bad envelope")
    try:
        kind = Kind(obj[1])
    except ValueError as exc:
        raise DecodeError(f"unknown kind {obj[1]!r}") from exc
    b = obj[4:]
    if len(b) != _ARITY[kind]:
        raise DecodeError(f"{kind.name}: {len(b)} fields")
    sender, cluster_id = _s(obj[2], empty=False), _s(obj[3])
    body: Message
    if kind is Kind.SPACE_REQUEST:
        body = SpaceRequest(_i(b[0], 0, _MAX_ID), _s(b[1]), _s(b[2], empty=False), _s(b[3]), _i(b[4], -1))
    elif kind is Kind.SPACE_GRANT:
        body = SpaceGrant(_i(b[0], 0, _MAX_ID), _s(b[1]), _s(b[2], empty=False), _i(b[3]), _i(b[4], 1),
                          _s(b[5], empty=False), decode_used(b[6]))  # fmt: skip
    elif kind is Kind.ADDRESS_GRANT:
        body = AddressGrant(_i(b[0], 0, _MAX_ID), _s(b[1]), _s(b[2], empty=False), _i(b[3]), _s(b[4]))
    elif kind is Kind.SPACE_DENIED:
        body = SpaceDenied(_i(b[0], 0, _MAX_ID), _s(b[1]), _s(b[2], empty=False), _s(b[3]), _i(b[4]))
    elif kind is Kind.RELEASE:
        body = Release(_i(b[0], 0, _MAX_ID), _s(b[1]), _s(b[2], empty=False), _i(b[3], -1), _s(b[4]))
    elif kind is Kind.RELEASE_ACK:
        body = ReleaseAck(_i(b[0], 0, _MAX_ID), _s(b[1]))
    elif kind is Kind.RECLAIM_INTENT:
        targets = tuple(_s(t, empty=False) for t in _l(b[1]))
        body = ReclaimIntent(_i(b[0], 0, _MAX_ID), targets, _s(b[2]), _s(b[3], empty=False),
                             _pairs(b[4], lambda e: _i(e, 1)))  # fmt: skip
    else:
        body = ReclaimReply(_i(b[0], 0, _MAX_ID), _s(b[1]), _s(b[2], empty=False),
                            tuple(_i(k) for k in _l(b[3])), _pairs(b[4], _s), decode_used(b[5]))  # fmt: skip
    return Envelope(sender, cluster_id, body)
