"""Spaces and blocks (ipam.md 3.2, 3.11, 3.12): what is allocated, tiled into fixed blocks.

Theory of operation. A *space* is a run of ``size`` units numbered by *offset* 0..size-1: the addresses of
one subnet of a network (IPv4 or IPv6), the cluster's VNI range, or the default subnet pool (whose units
are subnets). It is tiled by blocks of B = min(S, max(16, S // 256)) units (VNIs: 4096): block k covers
offsets [kB, (k+1)B), the last one possibly shorter. Tiles are fixed: never split, never merged, so there
is no fragmentation (Weave #1163, #2009) and a block is a stable unit of ownership. Blocks tile the *whole*
subnet, so every address, static ones included, has exactly one owner (no outside-the-ring path, #3003);
``ip_range`` only limits where dynamic picks land.

Reserved offsets (IPv4 network and broadcast, the IPv6 subnet-router address, the gateway, auxiliary
addresses) are a fixed set derived from the immutable network config: every believer skips them, so they
never need an owner and cannot leak (3.11).

A space's *genesis owner* is the node that believes every block at epoch 1: the network's creator for a
subnet, the cluster founder for the global spaces (3.2, 3.12). Nothing here has state: ``Space`` is a
value computed from a ``NetConfig`` or ``GlobalConfig``; address arithmetic is netaddr's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import netaddr

from meshnet.core.errors import LocalProtocolError

from .config import IpamConfig

__all__ = [
    "SpaceId",
    "SubnetConfig",
    "NetConfig",
    "GlobalConfig",
    "Space",
    "GLOBAL_SCOPE",
    "VNI_SPACE",
    "POOL_SPACE",
    "block_size_for",
    "parse_subnet",
]

#: NetworkDB's reserved id of the global network (ipam.md writes it ``_global``).
GLOBAL_SCOPE = ""
VNI_SPACE = "vni"
POOL_SPACE = "pool"


class SpaceId(NamedTuple):
    """Where a space lives: ``scope`` is the network id ("" for the global spaces), ``name`` the subnet
    in canonical CIDR form, ``"vni"`` or ``"pool"``."""

    scope: str
    name: str

    def __str__(self) -> str:
        return f"{self.scope or '_global'}/{self.name}"


def block_size_for(size: int, config: IpamConfig) -> int:
    """B = min(S, max(min_block_size, S // max_blocks)) (ipam.md 3.2)."""
    return min(size, max(config.min_block_size, size // config.max_blocks))


def parse_subnet(text: str) -> netaddr.IPNetwork:
    """A subnet in canonical form; ``LocalProtocolError`` with the fix for anything else."""
    try:
        net = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise LocalProtocolError(f"invalid subnet {text!r}: {exc}") from exc
    if net.ip != net.network:
        raise LocalProtocolError(f"subnet {text!r} has host bits set; did you mean {net.cidr}?")
    limit = 30 if net.version == 4 else 126
    if net.prefixlen > limit:
        raise LocalProtocolError(f"subnet {text} is too small: use a prefix of at most /{limit}")
    if net.version == 6 and net.prefixlen < 64:
        # offsets travel as msgpack uint64
        raise LocalProtocolError(f"IPv6 subnet {text} is too large: use a prefix of /64 or longer")
    return net.cidr


def _address(text: str, what: str) -> netaddr.IPAddress:
    try:
        return netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise LocalProtocolError(f"invalid {what} {text!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SubnetConfig:
    """One subnet of a network: CIDR, optional dynamic ``ip_range`` (a CIDR inside it), gateway (default
    the first usable address) and auxiliary addresses (Docker's ``--aux-address``), all canonical strings."""

    subnet: str
    ip_range: str | None = None
    gateway: str | None = None
    aux: tuple[str, ...] = ()

    @classmethod
    def make(
        cls,
        subnet: str,
        *,
        ip_range: str | None = None,
        gateway: str | None = None,
        aux: tuple[str, ...] = (),
    ) -> SubnetConfig:
        """Validate and canonicalise; ``LocalProtocolError`` names what is wrong."""
        net = parse_subnet(subnet)
        rng = None
        if ip_range is not None:
            r = parse_subnet(ip_range) if "/" in ip_range else parse_subnet(f"{ip_range}/{net.prefixlen}")
            if r.version != net.version or r.first < net.first or r.last > net.last:
                raise LocalProtocolError(f"ip_range {ip_range} is not inside subnet {net}")
            rng = str(r)
        gw = str(netaddr.IPAddress(net.first + 1, net.version))
        if gateway is not None:
            g = _address(gateway, "gateway")
            if g not in net:
                raise LocalProtocolError(f"gateway {gateway} is not inside subnet {net}")
            gw = str(g)
        auxes = []
        for a in aux:
            ip = _address(a, "aux address")
            if ip not in net:
                raise LocalProtocolError(f"aux address {a} is not inside subnet {net}")
            auxes.append(str(ip))
        return cls(str(net), rng, gw, tuple(sorted(set(auxes), key=lambda s: int(netaddr.IPAddress(s)))))


@dataclass(frozen=True, slots=True)
class NetConfig:
    """The immutable IPAM config of a network (``ipam.netcfg``, ipam.md 3.3): written by the creator,
    re-published unchanged by every node that attaches. Two different contents for one id is a bug alarm."""

    network: str
    subnets: tuple[SubnetConfig, ...]
    vni: int | None
    creator: str
    cluster_id: str
    #: the pool unit (subnet) this network drew from the default pool, if any (released with the network)
    pool_subnet: str | None = None

    def space_ids(self) -> list[SpaceId]:
        return [SpaceId(self.network, s.subnet) for s in self.subnets]


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    """The cluster's global spaces (VNIs and the default pool), founded once by the cluster founder and
    re-published by every node (so the genesis owner stays known after the founder's records are gone)."""

    founder: str
    cluster_id: str
    vni_first: int
    vni_last: int
    vni_block_size: int
    pool: str
    pool_prefix: int

    @classmethod
    def found(cls, founder: str, cluster_id: str, config: IpamConfig) -> GlobalConfig:
        pool = parse_subnet(config.default_pool)
        if not pool.prefixlen <= config.default_pool_prefix <= (32 if pool.version == 4 else 128):
            raise LocalProtocolError("default_pool_prefix must be inside the pool's prefix range")
        return cls(
            founder,
            cluster_id,
            config.vni_first,
            config.vni_last,
            config.vni_block_size,
            str(pool),
            config.default_pool_prefix,
        )

    def space_ids(self) -> list[SpaceId]:
        return [SpaceId(GLOBAL_SCOPE, VNI_SPACE), SpaceId(GLOBAL_SCOPE, POOL_SPACE)]


@dataclass(frozen=True)
class Space:
    """A space as a value: units, blocks, reserved offsets, the dynamic pick range and the genesis owner."""

    id: SpaceId
    kind: str  # "ipv4" | "ipv6" | "vni" | "pool"
    first: int  # the integer value of offset 0 (address, VNI, or first pool address)
    size: int
    block_size: int
    creator: str
    reserved: frozenset[int] = frozenset()
    pick_lo: int = 0
    pick_hi: int = 0  # exclusive
    unit_bits: int = 0  # pool: each unit is a subnet of 2**unit_bits addresses
    version: int = 4
    _pickable: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_subnet(cls, network: str, sub: SubnetConfig, creator: str, config: IpamConfig) -> Space:
        net = netaddr.IPNetwork(sub.subnet)
        size = net.size
        reserved = {0}
        if net.version == 4:
            reserved.add(size - 1)
        if sub.gateway is not None:
            reserved.add(int(netaddr.IPAddress(sub.gateway)) - net.first)
        for a in sub.aux:
            reserved.add(int(netaddr.IPAddress(a)) - net.first)
        lo, hi = 0, size
        if sub.ip_range is not None:
            r = netaddr.IPNetwork(sub.ip_range)
            lo, hi = r.first - net.first, r.last - net.first + 1
        return cls(
            SpaceId(network, sub.subnet),
            "ipv4" if net.version == 4 else "ipv6",
            net.first,
            size,
            block_size_for(size, config),
            creator,
            frozenset(reserved),
            lo,
            hi,
            version=net.version,
        )

    @classmethod
    def for_vni(cls, g: GlobalConfig) -> Space:
        size = g.vni_last - g.vni_first + 1
        return cls(
            SpaceId(GLOBAL_SCOPE, VNI_SPACE), "vni", g.vni_first, size, min(size, g.vni_block_size), g.founder,
            pick_hi=size,
        )  # fmt: skip

    @classmethod
    def for_pool(cls, g: GlobalConfig, config: IpamConfig) -> Space:
        pool = netaddr.IPNetwork(g.pool)
        bits = (32 if pool.version == 4 else 128) - g.pool_prefix
        size = 2 ** (g.pool_prefix - pool.prefixlen)
        return cls(
            SpaceId(GLOBAL_SCOPE, POOL_SPACE), "pool", pool.first, size, block_size_for(size, config), g.founder,
            pick_hi=size, unit_bits=bits, version=pool.version,
        )  # fmt: skip

    # ------------------------------------------------------------------ blocks

    @property
    def nblocks(self) -> int:
        return -(-self.size // self.block_size)

    def block_of(self, offset: int) -> int:
        return offset // self.block_size

    def block_range(self, k: int) -> tuple[int, int]:
        """Offsets [lo, hi) of block ``k``."""
        lo = k * self.block_size
        return lo, min(self.size, lo + self.block_size)

    def is_reserved(self, offset: int) -> bool:
        return offset in self.reserved

    def is_pickable(self, offset: int) -> bool:
        """Inside the dynamic pick range and not reserved."""
        return self.pick_lo <= offset < self.pick_hi and offset not in self.reserved

    def pickable_in(self, k: int) -> int:
        """How many offsets of block ``k`` a dynamic pick may land on (cached)."""
        n = self._pickable.get(k)
        if n is None:
            lo, hi = self.block_range(k)
            a, b = max(lo, self.pick_lo), min(hi, self.pick_hi)
            n = max(0, b - a) - sum(1 for r in self.reserved if a <= r < b)
            self._pickable[k] = n
        return n

    def free_in(self, k: int, used: object) -> int:
        """Pickable offsets of block ``k`` not in ``used`` (an iterable of offsets)."""
        lo, hi = self.block_range(k)
        taken = sum(1 for o in used if lo <= o < hi and self.is_pickable(o))  # type: ignore[attr-defined]
        return max(0, self.pickable_in(k) - taken)

    def first_free(self, k: int, allocs: object) -> int | None:
        """The lowest pickable offset of block ``k`` not in ``allocs`` (a container of offsets)."""
        lo, hi = self.block_range(k)
        o = max(lo, self.pick_lo)
        end = min(hi, self.pick_hi)
        while o < end:
            if o not in self.reserved and o not in allocs:  # type: ignore[operator]
                return o
            o += 1
        return None

    # ------------------------------------------------------------------ values

    def value(self, offset: int) -> str:
        """The canonical string of the unit at ``offset``: an address, a VNI, or a pool subnet."""
        if not 0 <= offset < self.size:
            raise LocalProtocolError(f"offset {offset} outside {self.id}")
        if self.kind == "vni":
            return str(self.first + offset)
        if self.kind == "pool":
            base = self.first + (offset << self.unit_bits)
            plen = (32 if self.version == 4 else 128) - self.unit_bits
            return f"{netaddr.IPAddress(base, self.version)}/{plen}"
        return str(netaddr.IPAddress(self.first + offset, self.version))

    def offset(self, value: str | int) -> int:
        """The offset of a unit given as in ``value``; ``LocalProtocolError`` if it is not in the space."""
        if self.kind == "vni":
            try:
                v = int(value)
            except (TypeError, ValueError) as exc:
                raise LocalProtocolError(f"invalid VNI {value!r}") from exc
            off = v - self.first
        elif self.kind == "pool":
            net = parse_subnet(str(value))
            if net.prefixlen != (32 if self.version == 4 else 128) - self.unit_bits:
                raise LocalProtocolError(f"{value} is not a pool subnet of {self.id}")
            off = (net.first - self.first) >> self.unit_bits
        else:
            ip = _address(str(value), "address")
            if ip.version != self.version:
                raise LocalProtocolError(f"{value} is not an IPv{self.version} address")
            off = int(ip) - self.first
        if not 0 <= off < self.size:
            raise LocalProtocolError(f"{value} is outside {self.id}")
        return off

    def contains(self, value: str) -> bool:
        try:
            self.offset(value)
        except LocalProtocolError:
            return False
        return True
