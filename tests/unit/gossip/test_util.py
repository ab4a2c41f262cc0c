"""The pure formulas, with memberlist 0.2.2's numbers (table-driven, exact)."""

from __future__ import annotations

import random

import pytest

from meshnet.gossip.awareness import Awareness
from meshnet.gossip.util import (
    k_random_nodes,
    push_pull_scale,
    remaining_suspicion_time,
    retransmit_limit,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (4, 0, 1.0, 4.0),  # max(1, n) guards log10(0)
        (4, 1, 1.0, 4.0),
        (4, 3, 1.0, 4.0),  # 3 nodes, LAN: log10(3) < 1 -> 4 s
        (4, 4, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 1.0, 12.0),
        (4, 50, 1.0, 4 * 1.698),  # log10(50) = 1.69897 truncated to 1.698 as Go does
        (6, 3, 5.0, 30.0),  # WAN
        (3, 3, 1.0, 3.0),  # local
    ],
)
def test_suspicion_timeout(mult: int, n: int, interval: float, expected: float) -> None:
    assert suspicion_timeout(mult, n, interval) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [
        (4, 1, 4),
        (4, 3, 4),
        (4, 9, 4),
        (4, 10, 8),
        (4, 99, 8),
        (4, 100, 12),
        (4, 999, 12),
        (4, 1000, 16),
        (2, 3, 2),
    ],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 30.0), (32, 30.0), (33, 60.0), (64, 60.0), (65, 90.0), (128, 90.0), (129, 120.0), (1000, 180.0)],
)
def test_push_pull_scale(n: int, expected: float) -> None:
    assert push_pull_scale(30.0, n) == expected


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "lo", "hi", "expected"),
    [
        (0, 3, 0.0, 2.0, 30.0, 30.0),  # no confirmations: max
        (1, 3, 0.0, 2.0, 30.0, 16.0),  # ln2/ln4 = 1/2 -> 30 - 14
        (3, 3, 0.0, 2.0, 30.0, 2.0),  # all confirmations: min
        (4, 3, 0.0, 2.0, 30.0, 2.0),  # never below min
        (1, 3, 4.0, 2.0, 30.0, 12.0),  # minus elapsed
        (1, 3, 20.0, 2.0, 30.0, -4.0),  # may be overdue
        (1, 2, 0.0, 4.0, 24.0, 11.381),  # LAN, 4 nodes: floor to ms of 11.3815...
        (2, 2, 0.0, 4.0, 24.0, 4.0),
    ],
)
def test_remaining_suspicion_time(
    n: int, k: int, elapsed: float, lo: float, hi: float, expected: float
) -> None:
    assert remaining_suspicion_time(n, k, elapsed, lo, hi) == pytest.approx(expected, abs=1e-9)


def test_k_random_nodes_distinct_filtered_and_seeded() -> None:
    nodes = list(range(10))
    picks = k_random_nodes(3, nodes, lambda x: x % 2 == 1, random.Random(7))
    assert len(picks) == 3
    assert len(set(picks)) == 3
    assert all(x % 2 == 0 for x in picks)
    assert picks == k_random_nodes(3, nodes, lambda x: x % 2 == 1, random.Random(7))


def test_k_random_nodes_exhaustive_for_small_lists() -> None:
    # Only one eligible element among three: found within 3n tries for almost every seed.
    found = [k_random_nodes(2, ["a", "b", "c"], lambda x: x != "b", random.Random(s)) for s in range(50)]
    assert all(f in ([], ["b"]) for f in found)
    assert sum(f == ["b"] for f in found) >= 45
    assert k_random_nodes(3, [], lambda x: False, random.Random(1)) == []
    assert k_random_nodes(0, [1, 2], lambda x: False, random.Random(1)) == []


def test_awareness_clamps_and_scales() -> None:
    a = Awareness(8)
    assert a.score == 0
    assert a.apply_delta(-1) == 0
    assert a.apply_delta(3) == 3
    assert a.scale(0.5) == 2.0
    assert a.apply_delta(100) == 7
    assert a.scale(1.0) == 8.0
    assert a.apply_delta(-2) == 5
    with pytest.raises(ValueError):
        Awareness(0)
