"""Lifeguard's local health awareness (memberlist-wire.md 8.4).

Theory of operation: a node that is itself slow (overloaded CPU, lossy NIC) should not accuse others
quickly. The score runs from 0 (healthy) to ``max_multiplier - 1``. It drops by 1 after a successful
probe, rises by the number of missing nacks (or by 1 when none were expected) after a failed probe, and
rises by 1 whenever this node has to refute a rumour about itself. Timeouts are multiplied by
``score + 1``. The score is a plain integer: no clock, no decay other than successful probes.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """The local health score, clamped to ``[0, max_multiplier - 1]``."""

    __slots__ = ("_max", "_score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be >= 1")
        self._max = max_multiplier
        self._score = 0

    @property
    def score(self) -> int:
        """The current score (0 = healthy)."""
        return self._score

    def apply_delta(self, delta: int) -> int:
        """Add ``delta`` (may be negative), clamp, and return the new score."""
        self._score = min(self._max - 1, max(0, self._score + delta))
        return self._score

    def scale(self, timeout: float) -> float:
        """``timeout * (score + 1)``."""
        return timeout * (self._score + 1)
