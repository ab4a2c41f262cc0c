"""Push-pull anti-entropy: joins, periodic syncs, serf's reconnect, libnetwork's rejoin, and the two
rules that repair a lost join rumour quickly.

Theory of operation
-------------------
A push-pull is one TCP exchange: we send our whole member table (plus serf's user state), the peer
answers with its own, and each side merges the other's (``Membership.merge_state``). ``AntiEntropy``
decides when to start one and with whom, builds our frame (cached until the table or serf state
changes), and tracks each exchange by stream id until its reply or failure. Who starts one, keyed in
the shared ``DeadlineHeap``:

* ``join``: one per seed (``Join=True``); ``JoinCompleted``/``JoinFailed`` per seed.
* ``"push_pull"``: memberlist's periodic sync with one random alive member, every
  ``push_pull_interval`` scaled above 32 nodes.
* ``"reconnect"``: serf's attempt to reach one random failed member.
* ``"rejoin"``, every ``rejoin_interval``: libnetwork's rule, join the seeds again when none of
  them is a live member; otherwise, **missing-seed rejoin**: join one random seed that is not in
  our node list at all (two nodes that joined only each other while their other seeds were cut
  off would stay an island forever). One connection per interval, so a seed that is gone for good
  costs a failed connect per minute; failed seeds are left to ``"reconnect"``.
* ``("sync", addr)``, **unknown-sender sync**: a datagram whose sender is unknown or believed dead (by
  ``SourceNode`` when a ping or indirect ping names it, else by the UDP source address) schedules a
  push-pull with it ``sync_unknown_delay`` later; if the sender is still unknown then, the exchange
  runs. The delay lets the sender's own rumour arrive first (it almost always does), so the rule
  only fires for a rumour that really missed us. At most ``MAX_PENDING_SYNCS`` are pending and
  each address is synced at most once per ``SYNC_COOLDOWN`` (or ``push_pull_interval`` if longer).
* ``"join_sync"``, **post-join syncs**: after our first successful join, push-pulls with one
  random alive member at each offset of ``join_sync_offsets`` (1, 2, 4 s by default), so that
  members which joined around the same time, whose rumours we or our seed missed, are learned.

Both rules only add ordinary ``Join=False`` push-pulls, which memberlist and serf peers answer as
any periodic sync. Everything stops at ``stop()`` (leave).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from meshnet.core.clock import DeadlineHeap
from meshnet.core.errors import DecodeError
from meshnet.gossip.codec import encode_push_pull_parts
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import JoinCompleted, JoinFailed
from meshnet.gossip.membership import ALIVE, DEAD, Membership
from meshnet.gossip.messages import PushPull
from meshnet.gossip.util import push_pull_scale

if TYPE_CHECKING:
    from meshnet.gossip.serf import SerfState

__all__ = ["AntiEntropy", "MAX_PENDING_SYNCS"]

Addr = tuple[str, int]

#: Unknown-sender syncs waiting for their delay at most (more unknown senders are ignored).
MAX_PENDING_SYNCS = 16
#: An address is synced for being unknown at most once per this long (or push_pull_interval if longer).
SYNC_COOLDOWN = 30.0


class AntiEntropy:
    """Starts and tracks push-pulls. Streams are opened and frames built through the facade."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        addr: Addr,
        membership: Membership,
        serf: SerfState | None,
        rng: random.Random,
        heap: DeadlineHeap,
        events: deque,
        stats: Counter,
        open_stream: Callable[[Addr, bytes], int],
        frame_stream: Callable[[bytes], bytes],
        cache_framed: bool,
        queue_join_intent: Callable[[], None],
        now: float,
    ) -> None:
        self.config = config
        self.addr = addr
        self.members = membership
        self.serf = serf
        self.rng = rng
        self.heap = heap
        self.events = events
        self.stats = stats
        self._open_stream = open_stream
        self._frame_stream = frame_stream
        self._cache_framed = cache_framed
        self._queue_join_intent = queue_join_intent
        self.stopped = False
        self.seeds: list[Addr] = []
        #: Our push-pull exchanges in flight: stream id -> (kind, peer address).
        self.requests: dict[int, tuple[str, Addr]] = {}
        self._cache: tuple[tuple, bytes, bytes | None] | None = None
        self._join_intent_due = False
        self._joined = False
        self._join_syncs: list[float] = []
        #: Unknown senders waiting for their delay: address -> the name they gave (or None).
        self.pending: dict[Addr, str | None] = {}
        #: Addresses synced recently (insertion order = expiry order): address -> expiry.
        self._cooldown: dict[Addr, float] = {}
        if config.push_pull_interval > 0:
            heap.set("push_pull", now + rng.random() * config.push_pull_interval)
        if config.reconnect_interval > 0:
            heap.set("reconnect", now + config.reconnect_interval)

    # -- starting exchanges -------------------------------------------------------------------------

    def join(self, seeds: Sequence[Addr], *, serf_intent: bool, now: float) -> None:
        """Push-pull (Join=True) with each seed."""
        self.seeds = [(s[0], int(s[1])) for s in seeds]
        self._join_intent_due = serf_intent
        for seed in self.seeds:
            if seed == self.addr:
                self.events.append(JoinFailed(seed, "seed is this node"))
                continue
            self.push_pull(seed, join=True, kind="join")
        if self.config.rejoin_interval > 0 and "rejoin" not in self.heap and self.seeds:
            self.heap.set("rejoin", now + self.config.rejoin_interval)

    def push_pull(self, addr: Addr, *, join: bool, kind: str) -> None:
        self.stats["push_pulls_started"] += 1
        sid = self._open_stream(addr, self.local_state(join))
        self.requests[sid] = (kind, addr)

    def stop(self) -> None:
        """We are leaving: no more exchanges start (those in flight may still complete)."""
        self.stopped = True
        for key in ("push_pull", "reconnect", "rejoin", "join_sync"):
            self.heap.cancel(key)
        for addr in self.pending:
            self.heap.cancel(("sync", addr))
        self.pending.clear()

    # -- the unknown-sender rule --------------------------------------------------------------------

    def saw_sender(self, addr: Addr, name: str | None, *, now: float) -> None:
        """A datagram came from ``addr`` (naming itself ``name``, if it did)."""
        if self.stopped or addr == self.addr or self.config.sync_unknown_delay <= 0:
            return
        if addr in self.pending or self._known(addr, name):
            return
        cooldown = self._cooldown
        while cooldown:  # forget expired cooldowns (insertion order is expiry order)
            first = next(iter(cooldown))
            if cooldown[first] > now:
                break
            del cooldown[first]
        if addr in cooldown or len(self.pending) >= MAX_PENDING_SYNCS:
            return
        self.pending[addr] = name
        self.heap.set(("sync", addr), now + self.config.sync_unknown_delay)

    def _known(self, addr: Addr, name: str | None) -> bool:
        """Do we know the sender as a member that is not dead? (A left member's last gossip needs
        no sync; a "dead" one that talks to us is alive and should hear that it is not.)"""
        if name:
            node = self.members.get(name)
            return node is not None and node.state != DEAD
        return self.members.known_at(addr)

    def _sync_due(self, addr: Addr, now: float) -> None:
        if addr not in self.pending:
            return
        name = self.pending.pop(addr)
        if self._known(addr, name):
            return
        self.stats["unknown_sender_syncs"] += 1
        self._cooldown[addr] = now + max(SYNC_COOLDOWN, self.config.push_pull_interval)
        self.push_pull(addr, join=False, kind="sync")

    # -- timers -------------------------------------------------------------------------------------

    def fire(self, key: object, now: float) -> bool:
        """Run ``key`` if it is one of ours; False if it is not."""
        if isinstance(key, tuple):
            if key[0] != "sync":
                return False
            self._sync_due(key[1], now)
            return True
        if key == "push_pull":
            target = self.members.random_nodes(1, lambda n: n is self.members.local or n.state != ALIVE)
            if target:
                self.push_pull(target[0].address, join=False, kind="push_pull")
            interval = push_pull_scale(self.config.push_pull_interval, self.members.num_nodes)
            self.heap.set("push_pull", now + interval)
        elif key == "join_sync":
            target = self.members.random_nodes(1, lambda n: n is self.members.local or n.state != ALIVE)
            if target:
                self.stats["join_syncs"] += 1
                self.push_pull(target[0].address, join=False, kind="join_sync")
            if self._join_syncs:
                self.heap.set("join_sync", self._join_syncs.pop(0))
        elif key == "reconnect":
            members = self.members
            failed = [n for n in members.failed if n in members.by_name]
            if failed:
                node = members.by_name[failed[self.rng.randrange(len(failed))]]
                self.stats["reconnects"] += 1
                self.push_pull(node.address, join=True, kind="reconnect")
            self.heap.set("reconnect", now + self.config.reconnect_interval)
        elif key == "rejoin":
            self._rejoin()
            self.heap.set("rejoin", now + self.config.rejoin_interval)
        else:
            return False
        return True

    def _rejoin(self) -> None:
        """The ``"rejoin"`` tick: libnetwork's split-cluster fix, then the missing-seed retry."""
        seeds = [s for s in self.seeds if s != self.addr]
        if not seeds:
            return
        members = self.members
        if not any(members.alive_at(s) for s in seeds):
            # libnetwork: no seed (other than us) is a live member, so join them all again. This
            # covers "nobody else is alive" and a join that only reached an island without a seed.
            self.stats["rejoins"] += 1
            for seed in seeds:
                self.push_pull(seed, join=True, kind="rejoin")
            return
        # Some seed is alive, but a seed we have never heard of (or whose member was reaped) may
        # lead to a cluster we are cut off from: two nodes that joined only each other while their
        # other seeds were unreachable form an island forever otherwise. Re-join one such seed per
        # tick (rate limit: one connection per rejoin_interval, also for a seed that is gone for
        # good). Failed members are serf's reconnect's job and left ones are gone, so a seed we
        # know in any state is not retried.
        missing = [s for s in seeds if not members.in_list_at(s)]
        if missing:
            self.stats["seed_rejoins"] += 1
            seed = missing[self.rng.randrange(len(missing))] if len(missing) > 1 else missing[0]
            self.push_pull(seed, join=True, kind="seed_rejoin")

    # -- our frame, and the other side's --------------------------------------------------------------

    def local_state(self, join: bool) -> bytes:
        """Our push-pull frame. Encodings are cached until the member table or serf state changes,
        and the framed bytes too when nothing is encrypted (compression is deterministic)."""
        serf = self.serf
        key = (self.members.epoch[0], join, serf.fingerprint() if serf is not None else None)
        cache = self._cache
        if cache is not None and cache[0] == key:
            plain, framed = cache[1], cache[2]
        else:
            user = b""
            if serf is not None:
                by_name = self.members.by_name
                left = sorted(n for n in serf.leaving if n in by_name and by_name[n].state >= DEAD)
                user = serf.local_state(sorted(by_name), left)
            plain = encode_push_pull_parts(join, self.members.push_states_raw(), user)
            framed = None
        if framed is None or not self._cache_framed:
            framed = self._frame_stream(plain)
        self._cache = (key, plain, framed if self._cache_framed else None)
        return framed

    def merge(self, pp: PushPull, now: float) -> str | None:
        """Merge a peer's push-pull; an error text if its versions are incompatible."""
        err = self.members.verify_protocol(pp.states)
        if err is not None:
            self.stats["push_pull_incompatible"] += 1
            return err
        self.members.merge_state(pp.states, now=now)
        if self.serf is not None and pp.user_state:
            try:
                self.serf.merge_remote_state(pp.user_state)
            except DecodeError:
                self.stats["serf_state_undecodable"] += 1
        self.stats["push_pulls_merged"] += 1
        return None

    def done(self, kind: str, addr: Addr, count: int, now: float) -> None:
        """Our exchange of ``kind`` with ``addr`` merged the peer's ``count`` rows."""
        if kind not in ("join", "rejoin"):
            return
        self.events.append(JoinCompleted(addr, count))
        if self.stopped:
            return
        if self._join_intent_due:
            self._join_intent_due = False
            self._queue_join_intent()
        if not self._joined:
            self._joined = True
            offsets = sorted(t for t in self.config.join_sync_offsets if t > 0)
            self._join_syncs = [now + t for t in offsets]
            if self._join_syncs:
                self.heap.set("join_sync", self._join_syncs.pop(0))

    def failed(self, kind: str, addr: Addr, reason: str) -> None:
        self.stats["push_pulls_failed"] += 1
        if kind in ("join", "rejoin"):
            self.events.append(JoinFailed(addr, reason))
