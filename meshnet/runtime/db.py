"""NetworkDB in the agent: the core beside ``Swim``, its state directory, and what the API reads.

Theory of operation (the wiring contract is ``meshnet/networkdb/README.md``):

- ``Node`` owns one ``DbShell`` when the agent runs NetworkDB. The NetworkDB core rides on Swim's user
  messages: ``Node`` drives the pair with ``meshnet.core.drive.drain_stacked`` after every input and
  ``fire_due_stacked`` on the single timer, and hands the core's events to ``handle_events`` *before*
  it sends the step's datagrams.
- Persistence (``state.py``): ``HighWaterRaised``, ``ClusterIdSet`` and a changed set of joined networks
  rewrite ``node.json`` synchronously in ``handle_events``, so the high-water mark is on disk before the
  outputs of the step that raised it leave the host; if that write fails the node stops rather than send.
  The node's own live entries are tracked from one internal watch (``include_hidden``): a watch event
  for an entry this node owns records its value; one that shows another owner or a delete forgets it.
  So API writes, the core's own re-assertions and another node taking over a key all reach the journal
  the same way. Journal lines are appended and fsynced in groups by ``run_persister``; an API write
  answers only once its line is durable (``wait_durable``).
- Restart with state: the core is built with the persisted high-water mark and cluster id, and right
  after construction, before any input, re-joins the persisted networks and re-creates the entries
  (``put_entry``), at ltimes above every ltime it used before. An empty directory restores nothing; the
  core's owner authority then deletes the node's old copies cluster-wide when peers show them.
- Cluster id: a node that starts with no join targets and no persisted cluster id founds the cluster
  (ipam.md 3.12); any other node adopts the id of the first peer it hears from.
- ``seen`` stamps, per slot, when this node's view got the current version (``time.monotonic()``, the
  system-wide CLOCK_MONOTONIC, comparable between agents on one host): the benchmark's latency figure
  and a diagnostic.

No protocol decision lives here: every rule is the core's.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from meshnet.core.errors import LocalProtocolError
from meshnet.networkdb import (
    GLOBAL_NETWORK,
    ClusterIdSet,
    EntryCreated,
    EntryDeleted,
    EntryUpdated,
    HighWaterRaised,
    MessageRejected,
    NetworkDB,
    NetworkDBConfig,
    NetworkSynced,
    PeerRefused,
    RequestReceived,
)
from meshnet.runtime.state import LoadedState, Slot, StateDir, encode_del, encode_put

__all__ = ["DbSettings", "DbShell", "StateWriteError", "JoinWait"]

log = logging.getLogger("meshnet.networkdb")

#: Compact the journal when it holds more lines than this or twice the node's own entries.
COMPACT_MIN_LINES = 4096
#: After a failed journal write, wait this long before retrying.
PERSIST_RETRY_INTERVAL = 1.0


class StateWriteError(Exception):
    """The state directory could not be written."""


@dataclass(frozen=True, slots=True)
class DbSettings:
    """NetworkDB in an agent: its config and the state directory (None: nothing persisted, tests only)."""

    config: NetworkDBConfig
    state_dir: str | None = None


@dataclass(slots=True)
class JoinWait:
    """An API join waiting for the core's ``NetworkSynced``."""

    done: trio.Event = field(default_factory=trio.Event)
    peers: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class DbShell:
    """One node's NetworkDB core plus the shell state around it (created by ``Node.run``)."""

    def __init__(
        self,
        settings: DbSettings,
        *,
        name: str,
        rng: random.Random,
        now: float,
        has_seeds: bool,
        state: StateDir | None,
        loaded: LoadedState | None = None,
    ) -> None:
        loaded = loaded if loaded is not None else LoadedState()
        self.settings = settings
        self.name = name
        self.state = state
        self.core = NetworkDB(
            settings.config,
            name=name,
            rng=rng,
            now=now,
            cluster_id=loaded.cluster_id,
            high_water=loaded.high_water,
        )
        #: One internal watch on everything, hidden entries included: owned entries and ``seen``.
        self._watch = self.core.watch(include_hidden=True)
        #: This node's own live entries, as the journal holds them.
        self.owned: dict[Slot, bytes] = {}
        #: slot -> (ltime, owner, CLOCK_MONOTONIC instant this view got that version).
        self.seen: dict[Slot, tuple[int, str, float]] = {}
        self._saved_meta: tuple[str, int, tuple[str, ...]] | None = None
        self._pending: list[bytes] = []
        self._seq = 0
        self._durable = 0
        self._waiters: list[tuple[int, trio.Event]] = []
        self._wake = trio.Event()
        self._compact_due = state is not None
        self.persist_error: str | None = None
        self.stats: dict[str, int] = {
            "restored_networks": 0,
            "restored_entries": 0,
            "restore_skipped": 0,
            "journal_lines": 0,
            "journal_flushes": 0,
            "journal_compactions": 0,
            "persist_errors": 0,
            "meta_writes": 0,
        }
        self._join_waits: dict[str, JoinWait] = {}
        self._restore(loaded, now)
        if not has_seeds and not self.core.cluster_id:
            cid = self.core.found_cluster(now=now)
            log.info("founded a new NetworkDB cluster %s (no join targets, no persisted cluster id)", cid)

    def _restore(self, loaded: LoadedState, now: float) -> None:
        """Re-join and re-create what the state directory holds, before any input (README: owner authority)."""
        if loaded.is_empty:
            return
        for network in loaded.networks:
            self.core.join_network(network, now=now)
            self.stats["restored_networks"] += 1
        joined = set(self.core.networks())
        for (network, table, key), value in loaded.entries.items():
            if network not in joined:
                self.stats["restore_skipped"] += 1
                continue
            try:
                self.core.put_entry(table, network, key, value, now=now)
            except LocalProtocolError as exc:  # a limit lowered since: the core deletes the old copy
                self.stats["restore_skipped"] += 1
                log.warning("not restoring %s/%r/%s: %s", table, network, key, exc)
                continue
            self.owned[(network, table, key)] = value
            self.stats["restored_entries"] += 1
        log.info(
            "restored %d networks and %d own entries from %s (high-water mark %d)",
            self.stats["restored_networks"],
            self.stats["restored_entries"],
            self.state.path if self.state is not None else "?",
            loaded.high_water,
        )

    # -- events (synchronous, before the step's datagrams are sent) --

    def handle_events(self, events: list[Any]) -> None:
        """Act on the core's events of one step. Raises StateWriteError if ``node.json`` cannot be
        written: the caller must then not send the step's outputs."""
        meta_dirty = False
        stamp = time.monotonic()
        for ev in events:
            kind = type(ev)
            if kind is EntryCreated or kind is EntryUpdated or kind is EntryDeleted:
                if ev.watch_id == self._watch:
                    self._mirror(ev, kind is EntryDeleted, stamp)
            elif kind is HighWaterRaised or kind is ClusterIdSet:
                meta_dirty = True
                if kind is ClusterIdSet:
                    log.info("NetworkDB cluster id is %s", ev.cluster_id)
            elif kind is NetworkSynced:
                wait = self._join_waits.pop(ev.network, None)
                if wait is not None:
                    wait.peers, wait.failed = ev.peers, ev.failed
                    wait.done.set()
                log.info(
                    "network %s synced: %d peers answered, %d did not",
                    _label(ev.network),
                    len(ev.peers),
                    len(ev.failed),
                )
            elif kind is PeerRefused:
                log.warning(
                    "refusing NetworkDB traffic from %s: its cluster id %s is not ours (%s)",
                    ev.node,
                    ev.cluster_id,
                    self.core.cluster_id,
                )
            elif kind is MessageRejected:
                log.debug("rejected NetworkDB message from %s:%s: %s", *ev.src, ev.reason)
            elif kind is RequestReceived:
                log.debug("no handler for a NetworkDB request from %s (it will time out)", ev.node)
        if self.state is None:
            return
        meta = (self.core.cluster_id, self.core.state_high_water, self._persisted_networks())
        if meta_dirty or meta != self._saved_meta:
            try:
                self.state.save_node(cluster_id=meta[0], high_water=meta[1], networks=meta[2])
            except OSError as exc:
                self.stats["persist_errors"] += 1
                raise StateWriteError(f"cannot write {self.state.path}/node.json: {exc}") from exc
            self._saved_meta = meta
            self.stats["meta_writes"] += 1

    def _persisted_networks(self) -> tuple[str, ...]:
        return tuple(n for n in self.core.networks() if n != GLOBAL_NETWORK)

    def _mirror(self, ev: Any, deleted: bool, stamp: float) -> None:
        slot = (ev.network, ev.table, ev.key)
        if deleted:
            self.seen.pop(slot, None)
            if slot in self.owned:
                del self.owned[slot]
                self._journal(encode_del(slot))
            return
        prev = self.seen.get(slot)
        if prev is None or prev[0] != ev.ltime or prev[1] != ev.owner:
            self.seen[slot] = (ev.ltime, ev.owner, stamp)
        if ev.owner == self.name:
            if self.owned.get(slot) != ev.value:
                self.owned[slot] = ev.value
                self._journal(encode_put(slot, ev.value))
        elif slot in self.owned:
            # Another node wrote this key after us: it is no longer ours to re-assert after a restart.
            del self.owned[slot]
            self._journal(encode_del(slot))

    def seen_at(self, slot: Slot, ltime: int, owner: str) -> float | None:
        s = self.seen.get(slot)
        return s[2] if s is not None and s[0] == ltime and s[1] == owner else None

    # -- joins --

    def expect_sync(self, network: str) -> JoinWait:
        """Register before ``join_network``: the returned wait is done at the core's ``NetworkSynced``."""
        wait = self._join_waits.get(network)
        if wait is None:
            wait = self._join_waits[network] = JoinWait()
        return wait

    def forget_sync(self, network: str, wait: JoinWait) -> None:
        if self._join_waits.get(network) is wait:
            del self._join_waits[network]

    # -- the journal --

    @property
    def journal_seq(self) -> int:
        """The sequence number of the last journal line queued (wait for it with ``wait_durable``)."""
        return self._seq

    def _journal(self, line: bytes) -> None:
        if self.state is None:
            return
        self._pending.append(line)
        self._seq += 1
        self.stats["journal_lines"] += 1
        self._wake.set()

    async def wait_durable(self, seq: int) -> None:
        """Return once journal line ``seq`` is on disk; StateWriteError while writes fail."""
        if self.state is None:
            return
        while self._durable < seq:
            if self.persist_error is not None:
                raise StateWriteError(self.persist_error)
            done = trio.Event()
            self._waiters.append((seq, done))
            await done.wait()

    def _notify(self) -> None:
        keep = []
        for seq, done in self._waiters:
            if seq <= self._durable or self.persist_error is not None:
                done.set()
            else:
                keep.append((seq, done))
        self._waiters = keep

    async def run_persister(self) -> None:
        """Append queued journal lines in groups (one fsync each); compact at start and when the log
        outgrows the node's own entries. Runs in the node's nursery while there is a state directory."""
        state = self.state
        assert state is not None
        while True:
            if not self._pending and not self._compact_due:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            lines, upto = self._pending, self._seq
            self._pending = []
            compact = self._compact_due or state.log_lines + len(lines) > max(
                COMPACT_MIN_LINES, 2 * len(self.owned)
            )
            try:
                if compact:
                    # self.owned already reflects every queued line: the snapshot replaces them.
                    await trio.to_thread.run_sync(state.compact, dict(self.owned))
                    self.stats["journal_compactions"] += 1
                    self._compact_due = False
                else:
                    await trio.to_thread.run_sync(state.append, lines)
                    self.stats["journal_flushes"] += 1
            except OSError as exc:
                self._pending = lines + self._pending
                self.stats["persist_errors"] += 1
                self.persist_error = f"cannot write the state directory {state.path}: {exc}"
                log.error("%s; retrying in %.0fs", self.persist_error, PERSIST_RETRY_INTERVAL)
                self._notify()
                await trio.sleep(PERSIST_RETRY_INTERVAL)
                continue
            self.persist_error = None
            self._durable = upto
            self._notify()

    def flush_now(self) -> None:
        """Write whatever is still queued, synchronously (at shutdown)."""
        if self.state is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self.state.append(lines)
            self._durable = self._seq
        except OSError as exc:
            log.error("could not write %d journal lines at shutdown: %s", len(lines), exc)

    def agent_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        out.update(
            owned_entries=len(self.owned),
            state_dir=self.state.path if self.state is not None else None,
            journal_pending=len(self._pending),
            journal_log_lines=self.state.log_lines if self.state is not None else 0,
            persist_error=self.persist_error,
        )
        return out


def _label(network: str) -> str:
    return "-" if network == GLOBAL_NETWORK else network
