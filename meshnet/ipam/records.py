"""IPAM records in NetworkDB (ipam.md 3.3), their keys and their msgpack values.

Theory of operation. NetworkDB merges one key by last-writer-wins on (ltime, writer); two nodes writing
one key could therefore order a stale epoch over a newer one. So every IPAM key names its single writer
(``...@<writer>``): LWW only orders one node's successive writes of its own key, and IPAM merges *across*
keys by epoch, in the derived view (``view.py``). Tables:

- ``ipam.block`` (scope: the network id; ``""`` for the global VNI and pool spaces), key
  ``<space>#<k>@<writer>``: ``BlockRecord`` {epoch, state held | granted | reclaim, to, by, used, seq}.
  ``held``: the writer believes the block at ``epoch``; ``used`` lists its live allocations (offset,
  holder node, holder tag) and doubles as the free hint and as the manifest a reclaimer keeps. ``granted``:
  the writer gave the block to ``to`` at ``epoch``; ``used`` is the manifest the grant carries (empty for
  a request-driven grant, which only moves fully free blocks). ``reclaim``: ``by`` asked the members to
  fence the block at ``epoch`` (a hint for status; the acknowledgements decide, ``reclaim.py``).
  ``seq`` orders one writer's rewrites at one epoch (hint updates). ``origin`` marks a *copy*: when a
  writer leaves or is reaped, NetworkDB deletes its entries, so every node re-publishes, under its own
  key, the records of that writer its view still ranks best (stewardship, ``core.py``); readers treat a
  copy exactly as the original, so nodes that join later learn the same ownership.
- ``ipam.netcfg`` (scope ``""``), key ``<network>@<writer>``: the immutable ``NetConfig``; key
  ``_global@<writer>``: the ``GlobalConfig`` of the VNI and pool spaces. Re-published unchanged by every
  node that uses them, so the genesis owner stays known after its writer's records are gone.
- ``ipam.retired`` (scope ``""``), key ``<node>@<writer>``: identities retired by a leave or a reclaim.
- ``ipam.node`` (scope ``""``), key ``<node>``: the identity record {host, generation, cluster id}: it
  tells predecessor adoption which identities share a host (3.9) and reveals a rolled-back state dir (3.10).

Decoding validates every field and raises ``DecodeError``; the core counts and ignores such records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from meshnet.core.errors import DecodeError

from .space import GlobalConfig, NetConfig, SubnetConfig

__all__ = [
    "TABLE_BLOCK",
    "TABLE_NETCFG",
    "TABLE_RETIRED",
    "TABLE_NODE",
    "GLOBAL_KEY",
    "Holder",
    "BlockRecord",
    "NodeRecord",
    "RetiredRecord",
    "block_key",
    "parse_block_key",
    "writer_key",
    "parse_writer_key",
    "encode_block",
    "decode_block",
    "encode_netcfg",
    "decode_netcfg",
    "encode_global",
    "decode_global",
    "encode_node",
    "decode_node",
    "encode_retired",
    "decode_retired",
]

TABLE_BLOCK = "ipam.block"
TABLE_NETCFG = "ipam.netcfg"
TABLE_RETIRED = "ipam.retired"
TABLE_NODE = "ipam.node"
#: The netcfg key of the global spaces (a network may not use this id).
GLOBAL_KEY = "_global"
_VERSION = 1
_STATES = ("held", "granted", "reclaim")


class Holder(NamedTuple):
    """Who holds an allocation: the node and a tag (an endpoint id, ``service:<id>``, ``lb``, ``net:<id>``,
    or ``~quarantine`` for a dead node's addresses waiting out the ARP/FDB drain)."""

    node: str
    tag: str


QUARANTINE = "~quarantine"


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """The value of an ``ipam.block`` entry (see the module docstring)."""

    epoch: int
    state: str
    to: str = ""
    by: str = ""
    used: tuple[tuple[int, str, str], ...] = ()
    seq: int = 0
    #: set on a copy: the departed node that wrote the original (see ``core.py``, stewardship)
    origin: str = ""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """The value of an ``ipam.node`` entry."""

    host: str
    generation: int
    cluster_id: str


@dataclass(frozen=True, slots=True)
class RetiredRecord:
    """The value of an ``ipam.retired`` entry: why (``leave``, ``reclaim``, ``adopted``) and by whom."""

    reason: str
    by: str


# ---------------------------------------------------------------------- keys


def block_key(space_name: str, k: int, writer: str) -> str:
    return f"{space_name}#{k}@{writer}"


def parse_block_key(key: str) -> tuple[str, int, str]:
    """(space name, block index, writer); ``DecodeError`` if malformed."""
    head, sep, writer = key.rpartition("@")
    name, sep2, k = head.rpartition("#")
    if not sep or not sep2 or not name or not writer or not k.isdigit():
        raise DecodeError(f"malformed ipam.block key {key!r}")
    return name, int(k), writer


def writer_key(subject: str, writer: str) -> str:
    return f"{subject}@{writer}"


def parse_writer_key(key: str) -> tuple[str, str]:
    subject, sep, writer = key.rpartition("@")
    if not sep or not subject or not writer:
        raise DecodeError(f"malformed key {key!r}")
    return subject, writer


# ---------------------------------------------------------------------- helpers


def _pack(kind: str, body: list[Any]) -> bytes:
    return msgpack.packb([_VERSION, kind, *body], use_bin_type=True)


def _unpack(data: bytes, kind: str, n: int) -> list[Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types; all are garbage here
        raise DecodeError(f"{kind}: not msgpack: {exc}") from exc
    if not isinstance(obj, list) or len(obj) != n + 2 or obj[0] != _VERSION or obj[1] != kind:
        raise DecodeError(f"{kind}: bad envelope")
    return obj[2:]


def _int(v: Any, what: str, lo: int = 0, hi: int = 2**64) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v < hi:
        raise DecodeError(f"{what} must be an int in [{lo}, {hi})")
    return v


def _str(v: Any, what: str, *, empty: bool = True, max_len: int = 512) -> str:
    if not isinstance(v, str) or (not empty and not v) or len(v) > max_len:
        raise DecodeError(f"{what} must be a string")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise DecodeError(f"{what} must be a list")
    return v


def decode_used(v: Any) -> tuple[tuple[int, str, str], ...]:
    out = []
    for item in _list(v, "used"):
        if not isinstance(item, list) or len(item) != 3:
            raise DecodeError("used item must be [offset, node, tag]")
        out.append((_int(item[0], "offset", 0, 2**128), _str(item[1], "holder node"), _str(item[2], "tag")))
    return tuple(out)


# ---------------------------------------------------------------------- block records


def encode_block(r: BlockRecord) -> bytes:
    return _pack("block", [r.epoch, r.state, r.to, r.by, [list(u) for u in r.used], r.seq, r.origin])


def decode_block(data: bytes) -> BlockRecord:
    epoch, state, to, by, used, seq, origin = _unpack(data, "block", 7)
    if state not in _STATES:
        raise DecodeError(f"unknown block state {state!r}")
    r = BlockRecord(
        _int(epoch, "epoch", 1),
        state,
        _str(to, "to"),
        _str(by, "by"),
        decode_used(used),
        _int(seq, "seq"),
        _str(origin, "origin"),
    )
    if (r.state == "granted") != bool(r.to) or (r.state == "reclaim") != bool(r.by):
        raise DecodeError("block record: to/by do not match the state")
    return r


# ---------------------------------------------------------------------- netcfg and global config


def encode_netcfg(c: NetConfig) -> bytes:
    subs = [[s.subnet, s.ip_range or "", s.gateway or "", list(s.aux)] for s in c.subnets]
    return _pack("netcfg", [c.network, subs, -1 if c.vni is None else c.vni, c.creator, c.cluster_id,
                            c.pool_subnet or ""])  # fmt: skip


def decode_netcfg(data: bytes) -> NetConfig:
    network, subs, vni, creator, cluster_id, pool = _unpack(data, "netcfg", 6)
    subnets = []
    for s in _list(subs, "subnets"):
        if not isinstance(s, list) or len(s) != 4:
            raise DecodeError("subnet must be [cidr, ip_range, gateway, aux]")
        aux = tuple(_str(a, "aux") for a in _list(s[3], "aux"))
        subnets.append(
            SubnetConfig(
                _str(s[0], "subnet", empty=False),
                _str(s[1], "ip_range") or None,
                _str(s[2], "gateway") or None,
                aux,
            )  # fmt: skip
        )
    v = _int(vni, "vni", -1, 2**24)
    return NetConfig(
        _str(network, "network", empty=False),
        tuple(subnets),
        None if v < 0 else v,
        _str(creator, "creator", empty=False),
        _str(cluster_id, "cluster id"),
        _str(pool, "pool subnet") or None,
    )


def encode_global(g: GlobalConfig) -> bytes:
    return _pack("global", [g.founder, g.cluster_id, g.vni_first, g.vni_last, g.vni_block_size, g.pool,
                            g.pool_prefix])  # fmt: skip


def decode_global(data: bytes) -> GlobalConfig:
    founder, cluster_id, first, last, block, pool, prefix = _unpack(data, "global", 7)
    g = GlobalConfig(
        _str(founder, "founder", empty=False),
        _str(cluster_id, "cluster id"),
        _int(first, "vni_first", 1, 2**24),
        _int(last, "vni_last", 1, 2**24),
        _int(block, "vni block", 1, 2**24),
        _str(pool, "pool", empty=False),
        _int(prefix, "pool prefix", 0, 129),
    )
    if g.vni_first > g.vni_last:
        raise DecodeError("vni_first > vni_last")
    return g


# ---------------------------------------------------------------------- node and retired records


def encode_node(r: NodeRecord) -> bytes:
    return _pack("node", [r.host, r.generation, r.cluster_id])


def decode_node(data: bytes) -> NodeRecord:
    host, gen, cluster_id = _unpack(data, "node", 3)
    return NodeRecord(
        _str(host, "host", empty=False), _int(gen, "generation"), _str(cluster_id, "cluster id")
    )


def encode_retired(r: RetiredRecord) -> bytes:
    return _pack("retired", [r.reason, r.by])


def decode_retired(data: bytes) -> RetiredRecord:
    reason, by = _unpack(data, "retired", 2)
    return RetiredRecord(_str(reason, "reason", empty=False), _str(by, "by", empty=False))
