"""Lifeguard suspicion of one member, held as a deadline (memberlist-wire.md 8.5).

Theory of operation: when a member becomes suspect, a ``Suspicion`` is created with the first
accuser's name, ``k`` (confirmations wanted), and the min/max timeouts. Its ``deadline`` starts at
``started_at + max`` (or ``+ min`` when k < 1). Each suspect message about the same member from a
*new* ``From`` is a confirmation: the total timeout shrinks to
``max - (ln(c+1)/ln(k+1)) * (max - min)`` (floored to the millisecond, never below ``min``), still
counted from ``started_at``. Confirmations beyond ``k`` and repeated senders are refused, which tells
the caller not to re-gossip them. The object never owns a timer: the facade arms
``DeadlineHeap`` at ``deadline`` and, when a confirmation moves the deadline into the past, declares
the member dead at once.

``make_suspicion`` computes k, min and max from the estimated node count ``n`` (which includes dead
and left members not yet reaped): ``k = suspicion_mult - 2``, or 0 when ``n - 2 < k``.
"""

from __future__ import annotations

from meshnet.gossip.util import remaining_suspicion_time, suspicion_timeout

__all__ = ["Suspicion", "make_suspicion", "suspicion_params"]


class Suspicion:
    """One member's suspicion: who confirmed it and when it expires."""

    __slots__ = ("k", "min_timeout", "max_timeout", "started_at", "deadline", "n", "_confirmed")

    def __init__(self, from_node: str, k: int, min_timeout: float, max_timeout: float, *, now: float) -> None:
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.started_at = now
        #: Confirmations counted so far (the first accuser is not one).
        self.n = 0
        # Only membership tests, never iterated: set order cannot leak into behaviour.
        self._confirmed = {from_node}
        self.deadline = now + (max_timeout if k >= 1 else min_timeout)

    def confirm(self, from_node: str, *, now: float) -> bool:
        """Count a suspect from ``from_node``. True (and a new ``deadline``) if it was a new confirmation."""
        if self.n >= self.k or from_node in self._confirmed:
            return False
        self._confirmed.add(from_node)
        self.n += 1
        # Counted from the start, as memberlist's timer reset to (timeout - elapsed) does.
        timeout = remaining_suspicion_time(self.n, self.k, 0.0, self.min_timeout, self.max_timeout)
        self.deadline = self.started_at + timeout
        return True


def suspicion_params(
    suspicion_mult: int, max_timeout_mult: int, n: int, probe_interval: float
) -> tuple[int, float, float]:
    """(k, min, max) for a new suspicion with ``n`` nodes in the member list."""
    k = suspicion_mult - 2
    if n - 2 < k:
        k = 0
    min_timeout = suspicion_timeout(suspicion_mult, n, probe_interval)
    return k, min_timeout, max_timeout_mult * min_timeout


def make_suspicion(
    from_node: str, *, suspicion_mult: int, max_timeout_mult: int, n: int, probe_interval: float, now: float
) -> Suspicion:
    """A new suspicion started by ``from_node`` at ``now``, sized for ``n`` nodes."""
    k, lo, hi = suspicion_params(suspicion_mult, max_timeout_mult, n, probe_interval)
    return Suspicion(from_node, k, lo, hi, now=now)
