"""Lifeguard suspicion deadlines (exact values, explicit now)."""

from __future__ import annotations

import pytest

from meshnet.gossip.suspicion import Suspicion, make_suspicion, suspicion_params


@pytest.mark.parametrize(
    ("n", "k", "lo", "hi"),
    [
        (3, 0, 4.0, 24.0),  # 3 nodes LAN: k = 2 but n - 2 < k -> 0
        (4, 2, 4.0, 24.0),  # 4 nodes (incl. a dead and a left one): k = 2
        (100, 2, 8.0, 48.0),
    ],
)
def test_params_lan(n: int, k: int, lo: float, hi: float) -> None:
    assert suspicion_params(4, 6, n, 1.0) == (k, lo, hi)


def test_three_nodes_lan_expires_after_min() -> None:
    s = make_suspicion("a", suspicion_mult=4, max_timeout_mult=6, n=3, probe_interval=1.0, now=100.0)
    assert s.k == 0
    assert s.deadline == 104.0
    assert s.confirm("b", now=101.0) is False  # k = 0: no confirmations wanted
    assert s.deadline == 104.0


def test_four_nodes_lan_starts_at_max_24s() -> None:
    s = make_suspicion("a", suspicion_mult=4, max_timeout_mult=6, n=4, probe_interval=1.0, now=10.0)
    assert s.k == 2
    assert s.deadline == 34.0


def test_confirmations_shrink_the_deadline() -> None:
    s = Suspicion("a", 2, 4.0, 24.0, now=10.0)
    assert s.confirm("a", now=11.0) is False  # the accuser itself is no confirmation
    assert s.deadline == 34.0
    assert s.confirm("b", now=12.0) is True
    assert s.n == 1
    assert s.deadline == pytest.approx(10.0 + 11.381, abs=1e-9)
    assert s.confirm("b", now=12.5) is False  # one confirmation per sender
    assert s.confirm("c", now=13.0) is True
    assert s.deadline == pytest.approx(14.0, abs=1e-9)  # k reached: min, counted from the start
    assert s.confirm("d", now=13.5) is False  # beyond k: refused, so not re-gossiped
    assert s.n == 2


def test_late_confirmation_can_put_the_deadline_in_the_past() -> None:
    s = Suspicion("a", 3, 2.0, 30.0, now=0.0)
    assert s.confirm("b", now=20.0) is True
    assert s.deadline == 16.0  # the facade declares the member dead at once
