"""Bookkeeping of NetworkDB's anti-entropy: outstanding syncs and the choice of sync peers.

Theory of operation: a bulk sync is one exchange with one peer over reliable (TCP) gossip-layer user
messages: the requester sends its attachments and entries of some networks, the peer merges them and
answers with its own for the networks both hold; the answer is the acknowledgement (libnetwork's
``bulkSyncAckTbl``). A ``PendingSync`` lives from the request until the answer's last part or the
timeout; the facade decides what a completion or a timeout means for its purpose:

- ``join``: part of the synchronous sync with every peer that ``join_network`` starts; when all have
  answered or timed out, ``NetworkSynced`` is emitted and rebroadcasting is enabled;
- ``periodic``: one round every ``bulk_sync_interval``; on timeout the next peer is tried, up to
  ``bulk_sync_attempts`` peers (libnetwork tries two);
- ``bootstrap``: a network that never completed a sync tries each peer it learns of until one answers;
- ``return``: a node that came back after a failure is synced at once by a few peers.

Peer choice (``Rotation``): libnetwork picks uniformly at random each round, so a peer can go unsynced
for many rounds (libnetwork.md section 10). Here each network walks a random permutation of its peers,
reshuffled when exhausted; peers learned meanwhile are appended and a returning peer is moved to the
front. Every peer is therefore synced within (number of peers) rounds: a hard bound on convergence
after a partition heals, from which the tests derive their settle time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["PendingSync", "Rotation"]


@dataclass(slots=True)
class PendingSync:
    sync_id: int
    peer: str
    networks: tuple[str, ...]
    purpose: str
    attempt: int = 1


class Rotation:
    """Per-network sync-peer order: a random permutation per round, newcomers appended."""

    __slots__ = ("_order",)

    def __init__(self) -> None:
        #: network -> the rest of this round, in order (an insertion-ordered dict used as a set)
        self._order: dict[str, dict[str, None]] = {}

    def next(
        self, network: str, candidates: list[str], rng: random.Random, *, exclude: str | None = None
    ) -> str | None:
        """The next peer of ``network`` among ``candidates`` (sorted), or None when there is none."""
        allowed = set(candidates)
        if exclude is not None:
            allowed.discard(exclude)
        if not allowed:
            return None
        order = self._order.setdefault(network, {})
        while order:
            peer = next(iter(order))
            del order[peer]
            if peer in allowed:
                return peer
        fresh = sorted(allowed)
        rng.shuffle(fresh)
        order.update(dict.fromkeys(fresh[1:]))
        return fresh[0]

    def add(self, network: str, peer: str, *, front: bool = False) -> None:
        """Make sure ``peer`` is in this round of ``network``; at the front if ``front``."""
        order = self._order.setdefault(network, {})
        if front:
            order.pop(peer, None)
            self._order[network] = {peer: None, **order}
        else:
            order.setdefault(peer, None)

    def forget(self, network: str) -> None:
        self._order.pop(network, None)
