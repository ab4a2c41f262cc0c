"""The simulated network: per-link latency, loss, duplication, reordering, size limit and partitions.

Theory of operation. Nodes are small integers (their index in the cluster). ``Network`` answers two
questions for the cluster: "when (if ever) does this datagram from ``src`` arrive at ``dst``?"
(``datagram_delays``: zero, one or two delays, so loss and duplication are just list lengths) and
"can a TCP connection be made between these two now, and how long do its hops take?"
(``connected`` and ``one_way_us``). It never schedules anything itself and holds no clock.

Latency is drawn per packet from a seeded distribution (``Latency``): uniform jitter around a base,
like ``tc netem delay 2ms 1ms``; jitter alone already reorders packets, and ``reorder`` adds an extra
delay to a fraction of them. All randomness comes from the one ``random.Random`` handed in, consumed
in the (deterministic) order the cluster asks, so a seed fixes every delay.

Partitions map each node to a group (default group 0). Traffic from group a to group b is dropped
when ``(a, b)`` is in the blocked set; ``partition()`` blocks every pair of distinct groups both ways
and ``block_one_way()`` makes an asymmetric cut. Datagrams follow the directed rule; a TCP stream
needs both directions. Per-link ``LinkParams`` overrides replace the defaults for one directed link.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Latency", "LinkParams", "Network", "PROFILES", "profile"]


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay: ``base_us`` plus uniform jitter in ``[-jitter_us, +jitter_us]``, at least 1 µs."""

    base_us: int = 2000
    jitter_us: int = 1000

    def sample(self, rng: random.Random) -> int:
        """Draw one delay in microseconds."""
        if not self.jitter_us:
            return max(1, self.base_us)
        d = self.base_us + int(self.jitter_us * (2.0 * rng.random() - 1.0))
        return d if d > 0 else 1


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Behaviour of one directed link (or the default for all links).

    ``loss``/``duplicate``/``reorder`` are probabilities per datagram; a reordered datagram gets an
    extra uniform delay in ``[0, reorder_extra_us]``. Datagrams larger than ``max_datagram_bytes`` are
    dropped (an MTU that does not fragment).
    """

    latency: Latency = field(default_factory=Latency)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_extra_us: int = 10_000
    max_datagram_bytes: int = 65_507


#: Named default-link profiles: ``lan`` is the anchors.md netem setup (2 ms ± 1 ms), ``local`` loopback.
PROFILES: dict[str, LinkParams] = {
    "lan": LinkParams(latency=Latency(2000, 1000)),
    "local": LinkParams(latency=Latency(100, 50)),
}


def profile(name: str, **changes: object) -> LinkParams:
    """The named profile's ``LinkParams`` with some fields replaced (e.g. ``loss=0.01``)."""
    from dataclasses import replace

    return replace(PROFILES[name], **changes)  # type: ignore[arg-type]


class Network:
    """Link behaviour and reachability between nodes ``0..n-1``; see the module comment."""

    def __init__(self, rng: random.Random, default: LinkParams | None = None) -> None:
        self.rng = rng
        self.default = default if default is not None else PROFILES["lan"]
        self._group: dict[int, int] = {}
        self._blocked: set[tuple[int, int]] = set()
        self._overrides: dict[tuple[int, int], LinkParams] = {}
        #: Counters: datagrams lost (random), cut (partition), oversized, duplicated.
        self.lost = 0
        self.cut = 0
        self.oversized = 0
        self.duplicated = 0

    # -- configuration ----------------------------------------------------------------------------

    def set_default(self, params: LinkParams) -> None:
        """Replace the default link parameters (e.g. turn loss on or off)."""
        self.default = params

    def set_link(self, src: int, dst: int, params: LinkParams | None) -> None:
        """Override the directed link ``src -> dst``; ``None`` removes the override."""
        if params is None:
            self._overrides.pop((src, dst), None)
        else:
            self._overrides[(src, dst)] = params

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Split nodes into groups that cannot reach each other (both directions).

        Nodes not listed stay in group 0, so ``partition([[0, 1]])`` isolates nodes 0 and 1 from the
        rest. Replaces any earlier partition.
        """
        self._group.clear()
        self._blocked.clear()
        ids = [0]
        for gid, members in enumerate(groups, start=1):
            ids.append(gid)
            for node in members:
                self._group[node] = gid
        for a in ids:
            for b in ids:
                if a != b:
                    self._blocked.add((a, b))

    def block_one_way(self, src_nodes: Iterable[int], dst_nodes: Iterable[int]) -> None:
        """Asymmetric cut: traffic from ``src_nodes`` to ``dst_nodes`` is dropped, the reverse is not.

        Puts the two node sets in two fresh groups (others keep theirs) and blocks that one direction.
        """
        base = max(self._group.values(), default=0) + 1
        for node in src_nodes:
            self._group[node] = base
        for node in dst_nodes:
            self._group[node] = base + 1
        self._blocked.add((base, base + 1))

    def heal(self) -> None:
        """Remove every partition and one-way cut (link overrides stay)."""
        self._group.clear()
        self._blocked.clear()

    @property
    def is_partitioned(self) -> bool:
        """True when some directed pair of groups is blocked."""
        return bool(self._blocked)

    def group_of(self, node: int) -> int:
        """The partition group ``node`` is in (0 when unpartitioned)."""
        return self._group.get(node, 0)

    # -- queries ----------------------------------------------------------------------------------

    def can_send(self, src: int, dst: int) -> bool:
        """Whether the partition lets a datagram go from ``src`` to ``dst``."""
        if not self._blocked:
            return True
        g = self._group
        return (g.get(src, 0), g.get(dst, 0)) not in self._blocked

    def connected(self, a: int, b: int) -> bool:
        """Whether a TCP connection between ``a`` and ``b`` can work (both directions open)."""
        return self.can_send(a, b) and self.can_send(b, a)

    def params(self, src: int, dst: int) -> LinkParams:
        """The effective parameters of the directed link."""
        if self._overrides:
            p = self._overrides.get((src, dst))
            if p is not None:
                return p
        return self.default

    def one_way_us(self, src: int, dst: int) -> int:
        """One latency sample for ``src -> dst`` (a stream hop)."""
        return self.params(src, dst).latency.sample(self.rng)

    def datagram_delays(self, src: int, dst: int, size: int) -> list[int]:
        """Delays (µs) after which copies of a datagram arrive: ``[]`` lost, ``[d]``, or two copies."""
        if self._blocked and not self.can_send(src, dst):
            self.cut += 1
            return []
        p = self._overrides.get((src, dst), self.default) if self._overrides else self.default
        if size > p.max_datagram_bytes:
            self.oversized += 1
            return []
        rng = self.rng
        if p.loss and rng.random() < p.loss:
            self.lost += 1
            return []
        d = p.latency.sample(rng)
        if p.reorder and rng.random() < p.reorder:
            d += int(rng.random() * p.reorder_extra_us)
        if p.duplicate and rng.random() < p.duplicate:
            self.duplicated += 1
            return [d, p.latency.sample(rng)]
        return [d]
