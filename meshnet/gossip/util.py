"""Pure formulas of SWIM + Lifeguard, with memberlist 0.2.2's numbers (memberlist-wire.md 8.5, 8.8, 8.9).

Theory of operation: nothing here keeps state or reads a clock. Durations are float seconds. Where
memberlist truncates to an integer (Go ``time.Duration`` arithmetic), the same truncation is applied
here so that timeouts match the Go implementation to the millisecond:

- ``suspicion_timeout``: min suspicion = mult * max(1, log10(max(1, n))) * interval, the scale
  truncated to thousandths as Go does with ``time.Duration(nodeScale*1000)``.
- ``remaining_suspicion_time``: Lifeguard's shrinking timeout after ``n`` confirmations out of ``k``,
  floored to the millisecond and never below ``min``, minus the time already elapsed.
- ``retransmit_limit``: each broadcast is sent mult * ceil(log10(n + 1)) times.
- ``push_pull_scale``: the anti-entropy interval grows with ceil(log2(n) - 5) + 1 above 32 nodes.
- ``k_random_nodes``: up to k distinct random picks that pass a filter, tried at most 3n times, as
  memberlist's ``kRandomNodes`` (O(k) when most nodes are eligible, exhaustive for small n).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "suspicion_timeout",
    "remaining_suspicion_time",
    "retransmit_limit",
    "push_pull_scale",
    "k_random_nodes",
    "PUSH_PULL_SCALE_THRESHOLD",
]

T = TypeVar("T")

#: Above this many nodes the push-pull interval is scaled up.
PUSH_PULL_SCALE_THRESHOLD = 32


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """Lifeguard's minimum suspicion timeout for an estimated cluster size ``n``.

    ``suspicion_mult * max(1, log10(max(1, n))) * interval``; 3 nodes LAN -> 4.0 s, 100 nodes -> 8.0 s.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * math.floor(node_scale * 1000.0) * interval / 1000.0


def remaining_suspicion_time(n: int, k: int, elapsed: float, min_timeout: float, max_timeout: float) -> float:
    """Time left on a suspicion after ``n`` of ``k`` wanted confirmations, ``elapsed`` s after it began.

    The total timeout is ``max - (ln(n+1)/ln(k+1)) * (max - min)``, floored to the millisecond and
    never below ``min``; the result may be negative (the suspicion is already overdue).
    """
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = math.floor(1000.0 * raw) / 1000.0
    if timeout < min_timeout:
        timeout = min_timeout
    return timeout - elapsed


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one broadcast is sent: ``retransmit_mult * ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """The push-pull interval for ``n`` nodes: unchanged up to 32, then times ceil(log2(n) - 5) + 1."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
    return multiplier * interval


def k_random_nodes(k: int, nodes: Sequence[T], exclude: Callable[[T], bool], rng: random.Random) -> list[T]:
    """Up to ``k`` distinct elements of ``nodes`` for which ``exclude`` is false, picked at random.

    Tries at most ``3 * len(nodes)`` random indexes, so the result may be short for small lists with
    few eligible nodes (memberlist's behaviour). Only ``rng`` supplies randomness.
    """
    n = len(nodes)
    picked: list[T] = []
    if n == 0 or k <= 0:
        return picked
    seen: list[int] = []
    for _ in range(3 * n):
        if len(picked) >= k:
            break
        idx = rng.randrange(n)
        if idx in seen:
            continue
        node = nodes[idx]
        if exclude(node):
            continue
        seen.append(idx)
        picked.append(node)
    return picked
