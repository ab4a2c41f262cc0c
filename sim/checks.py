"""Convergence and safety predicates over a simulated cluster.

Theory of operation. Asking every core for ``members()`` is O(N) per node, O(N^2) per check: fine for
nine nodes, far too slow to poll at 1,000. So the cluster keeps, per node, a ``MemberView`` fed by the
node's own events (joined/updated/suspected keep a member *up*; failed/left/reaped take it *down*)
with an order-independent digest of its up-set (count and sum of 64-bit name hashes). "Every live
node sees exactly the live set" is then a comparison of one digest per node against the live set's
digest: O(N). Suspect members count as up here, as in memberlist's ``Members()``; the O(N^2)
``members_agree`` reads the cores directly and can insist on ``alive``.

``SafetyMonitor`` holds state between checks (for a Hypothesis ``@invariant``): the highest
incarnation each observer has seen of each member, each running core's own incarnation, and the
times of faults, and it raises ``AssertionError`` with a precise message when

* an incarnation goes down (per observer and member, reset when that member is forgotten or the
  observer restarts; and a running core's own incarnation),
* a running node holds itself as dead (or left, unless it called ``leave``),
* a running node is declared failed by another node while the network is clean and has been for
  a grace period (see ``SafetyMonitor.false_death_grace``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.cluster import Cluster

__all__ = [
    "MemberView",
    "name_hash",
    "digest_of",
    "membership_converged",
    "unconverged",
    "members_agree",
    "SafetyMonitor",
    "suspicion_timeout_bounds",
    "detection_bound",
]

_MASK = (1 << 64) - 1
_HASHES: dict[str, int] = {}

UP_STATES = frozenset({"alive", "suspect"})


def name_hash(name: str) -> int:
    """A deterministic 64-bit hash of a member name (cached)."""
    h = _HASHES.get(name)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
        _HASHES[name] = h
    return h


def digest_of(names: Iterable[str]) -> tuple[int, int]:
    """(count, digest) of a set of names, comparable with ``MemberView.key``."""
    n = 0
    d = 0
    for name in names:
        n += 1
        d = (d + name_hash(name)) & _MASK
    return n, d


class MemberView:
    """One node's membership as told by its events: the up-set and its digest."""

    __slots__ = ("up", "digest", "last_change_us")

    def __init__(self, self_name: str) -> None:
        self.up: set[str] = {self_name}
        self.digest = name_hash(self_name)
        self.last_change_us = 0

    @property
    def key(self) -> tuple[int, int]:
        """(count, digest) of the up-set."""
        return len(self.up), self.digest

    def mark_up(self, name: str, t_us: int) -> None:
        if name not in self.up:
            self.up.add(name)
            self.digest = (self.digest + name_hash(name)) & _MASK
            self.last_change_us = t_us

    def mark_down(self, name: str, t_us: int) -> None:
        if name in self.up:
            self.up.discard(name)
            self.digest = (self.digest - name_hash(name)) & _MASK
            self.last_change_us = t_us


def membership_converged(cluster: Cluster) -> bool:
    """Every live (running) node's event view holds exactly the live set as up. O(N)."""
    live = cluster.live_nodes()
    if not live:
        return True
    target = digest_of(n.name for n in live)
    return all(n.view.key == target for n in live)


def unconverged(cluster: Cluster, limit: int = 10) -> list[str]:
    """Human-readable differences behind a False ``membership_converged`` (O(N^2), for messages)."""
    live = cluster.live_nodes()
    want = {n.name for n in live}
    out: list[str] = []
    for n in live:
        if n.view.up != want:
            missing = sorted(want - n.view.up)
            extra = sorted(n.view.up - want)
            out.append(
                f"{n.name}: missing {missing[:8]}{'...' if len(missing) > 8 else ''} extra {extra[:8]}"
            )
            if len(out) >= limit:
                break
    return out


def members_agree(cluster: Cluster, *, strict: bool = True) -> list[str]:
    """Read every live core's ``members()``: each must list exactly the live set as alive.

    ``strict`` requires state ``alive``; otherwise ``suspect`` counts too. Returns the problems (empty
    when they agree). O(N^2): for small clusters and final checks.
    """
    live = cluster.live_nodes()
    want = {n.name for n in live}
    ok_states = {"alive"} if strict else UP_STATES
    problems: list[str] = []
    for n in live:
        have = {m.name for m in n.core.members() if m.state in ok_states}
        if have != want:
            problems.append(f"{n.name}: missing {sorted(want - have)} extra {sorted(have - want)}")
    return problems


def suspicion_timeout_bounds(config: Any, n: int) -> tuple[float, float]:
    """Lifeguard suspicion timeout (min, max) for a cluster of ``n`` (memberlist util.go/state.go).

    min = suspicion_mult * max(1, log10(max(1, n))) * probe_interval; max = suspicion_max_timeout_mult * min.
    """
    scale = max(1.0, math.log10(max(1, n)))
    lo = config.suspicion_mult * scale * config.probe_interval
    return lo, config.suspicion_max_timeout_mult * lo


def detection_bound(config: Any, n: int, *, slack: float = 2.0) -> float:
    """Upper bound (s) from a crash until every live node has declared the crashed node failed.

    Terms: up to two probe rounds until some prober picks the crashed node (memberlist probes members in
    shuffled round-robin order, so with n members a given one is probed by somebody about every
    period; we allow 2 periods), the probe itself (``probe_interval``, which covers the direct timeout
    and the indirect round), then the suspicion timer at its *maximum* (the Lifeguard timer only
    shrinks with confirmations, so max is the worst case), then dissemination of the ``dead`` rumour
    (``slack`` seconds: ~log(n) gossip rounds). Awareness is assumed healthy (no loss).
    """
    _, smax = suspicion_timeout_bounds(config, n)
    return 3 * config.probe_interval + smax + slack


class SafetyMonitor:
    """Safety invariants checked between steps; see the module comment.

    Subscribes to the cluster's events on construction. A false death is a ``MemberFailed`` about node M
    by observer O at time t when M is running (and not leaving) and all of: loss is 0, no partition is
    active, and ``t - max(last_net_fault_end, M's start) > false_death_grace``. So "reachable" means:
    running, with no partition and no loss in force since the grace period began. Suspicions begun
    during a fault may legitimately end in ``dead`` after the heal, which is why the grace exists.
    """

    def __init__(self, cluster: Cluster, *, scan_members: bool = True) -> None:
        self.cluster = cluster
        self.scan_members = scan_members
        cfg = cluster.config
        _, smax = suspicion_timeout_bounds(cfg, max(2, len(cluster.nodes)))
        #: A probe in flight at heal time (awareness-scaled interval) + the longest suspicion + gossip.
        self.false_death_grace = cfg.awareness_max_multiplier * cfg.probe_interval + smax + 2.0
        self.problems: list[str] = []
        self._seen: dict[tuple[str, int, str], int] = {}
        self._own: dict[str, tuple[int, int]] = {}
        cluster.listeners.append(self._on_event)

    # -- event-driven checks ----------------------------------------------------------------------

    def _on_event(self, node: Any, t_us: int, ev: Any, flat: tuple[Any, ...]) -> None:
        kind = flat[0]
        if kind == "MemberReaped":
            self._seen.pop((node.name, node.life, flat[1]), None)
            return
        if len(flat) < 3 or not isinstance(flat[2], int):
            return
        member, inc = flat[1], flat[2]
        if member == node.name:
            if kind == "MemberFailed":
                self.problems.append(f"t={t_us / 1e6:.6f} {node.name} declared itself failed")
            return
        key = (node.name, node.life, member)
        prev = self._seen.get(key)
        if prev is not None and inc < prev:
            self.problems.append(
                f"t={t_us / 1e6:.6f} {node.name}: {kind} {member} at incarnation {inc} after {prev}"
            )
        elif prev is None or inc > prev:
            self._seen[key] = inc
        if kind == "MemberFailed" and self.is_false_death(t_us, member):
            self.problems.append(
                f"t={t_us / 1e6:.6f} {node.name} declared {member} failed although it is running and "
                f"reachable (clean network since {self.cluster.last_net_fault_end_us / 1e6:.3f}s)"
            )

    def is_false_death(self, t_us: int, member: str) -> bool:
        """Whether a ``MemberFailed(member)`` at ``t_us`` is a false death (see class docstring)."""
        c = self.cluster
        node = c.by_name.get(member)
        if node is None or not node.running or node.leaving:
            return False
        if c.network.is_partitioned or c.network.default.loss > 0:
            return False
        since = max(c.last_net_fault_end_us, node.started_us)
        return t_us - since > self.false_death_grace * 1e6

    # -- state scan -------------------------------------------------------------------------------

    def check(self) -> None:
        """Scan every running core (if ``scan_members``) and raise AssertionError on any violation."""
        c = self.cluster
        problems = self.problems
        if self.scan_members:
            for node in c.nodes:
                if not node.running:
                    continue
                for m in node.core.members():
                    if m.name == node.name:
                        life, inc = self._own.get(node.name, (-1, -1))
                        if life == node.life and m.incarnation < inc:
                            problems.append(
                                f"{node.name}: own incarnation went down {inc} -> {m.incarnation}"
                            )
                        self._own[node.name] = (node.life, m.incarnation)
                        if m.state == "dead" or (m.state == "left" and not node.leaving):
                            problems.append(f"{node.name}: holds itself as {m.state} while running")
                        continue
                    key = (node.name, node.life, m.name)
                    prev = self._seen.get(key)
                    if prev is not None and m.incarnation < prev:
                        problems.append(
                            f"{node.name} holds {m.name} at incarnation {m.incarnation} after seeing {prev}"
                        )
                    elif prev is None or m.incarnation > prev:
                        self._seen[key] = m.incarnation
        if problems:
            msg = "; ".join(problems[:10])
            self.problems = []
            raise AssertionError(msg + "\n--- trace tail ---\n" + c.trace.tail(40))
