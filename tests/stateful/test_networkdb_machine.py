"""Hypothesis rule machine over the in-memory NetworkDB harness (``tests/unit/networkdb/ndb_harness``):
random writes, deletes, foreign overwrites, network joins and leaves, partitions, UDP loss, crashes and
restarts (with and without the state directory), graceful cluster leaves and time.

Safety, after every step, for every running node:

* no entries (not even tombstones or hidden ones) of a network the node has not joined;
* no resurrection: once a node life has held a tombstone for a slot in an attachment epoch of that
  network, it never again holds a live version of lower precedence there (reaping cannot undo a delete
  here: partitions are healed well within ``reap_entry_interval``);
* the events of an unfiltered watch, replayed into a mirror, equal the node's visible view: watchers
  see exactly the table, no more, no less (hiding and revealing included).

Hide, never delete: right after a partition or crash, every live entry a node held whose owner it now
believes failed is still held, hidden; right after a heal, every live entry a node held (hidden or not) whose owner is
running is visible at once, at the same version.

Liveness (``heal_and_settle``): heal, stop loss, restart every crashed node, run ``settle_time``; then
every running node's view of each network it joined equals the reference model. The model follows the
owner-is-authoritative rule: keys are written by one node (``k<i>@<node>``), so a slot's expected state
is its owner's latest intent (its last write, or deleted if the owner left the network, left the
cluster or restarted with an empty state directory). Slots overwritten by another node are "contested"
(their winner depends on clocks); for those only agreement between nodes is checked.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meshnet.networkdb import EntryCreated, EntryDeleted, EntryUpdated, fast
from tests.unit.networkdb.ndb_harness import Cluster, settle_time

settings.register_profile(
    "networkdb-machine-ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "networkdb-machine-dev",
    deadline=None,
    max_examples=60,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("NETWORKDB_MACHINE_PROFILE", "networkdb-machine-ci")

CFG = fast()
NETWORKS = ["", "a", "b"]
TABLE = "t"
MAX_PARTITION = CFG.reap_entry_interval / 4


class NetworkDBMachine(RuleBasedStateMachine):
    @initialize(n=st.integers(3, 5), seed=st.integers(0, 2**32 - 1))
    def boot(self, n, seed):
        self.c = Cluster(n, config=CFG, seed=seed)
        self.gone: set[str] = set()  # left the cluster for good
        #: model: (network, key) -> (owner, value or None if deleted)
        self.model: dict[tuple[str, str], tuple[str, bytes | None]] = {}
        self.contested: set[tuple[str, str]] = set()
        self.joined: dict[str, set[str]] = {name: {""} for name in self.c.names}
        self.partitioned_at: float | None = None
        self.counter = 0
        #: per node life: (network, slot) -> highest tombstone precedence seen in this epoch
        self.floors: dict[str, dict[tuple, tuple]] = {}
        self.mirrors: dict[str, dict[tuple, bytes]] = {}
        self.watch_ids: dict[str, int] = {}
        for name in self.c.names:
            self._new_life(name)
            self.c.call(name, "join_network", "a")
            self.joined[name].add("a")
        self.c.run_for(0.5)

    # -- helpers ---------------------------------------------------------------------------------

    def _new_life(self, name):
        self.c.take_events(name)  # a new life numbers its watches from 1 again
        self.floors[name] = {}
        self.mirrors[name] = {}
        self.watch_ids[name] = self.c.call(name, "watch")
        self._drain_watch(name)

    def _drain_watch(self, name):
        wid = self.watch_ids[name]
        mirror = self.mirrors[name]
        for ev in self.c.take_events(name, (EntryCreated, EntryUpdated, EntryDeleted)):
            if ev.watch_id != wid:
                continue
            slot = (ev.network, ev.table, ev.key)
            if isinstance(ev, EntryCreated):
                assert slot not in mirror, f"{name}: create for {slot} already in view"
                mirror[slot] = ev.value
            elif isinstance(ev, EntryUpdated):
                assert mirror.get(slot) == ev.prev_value, f"{name}: update of {slot} not matching view"
                mirror[slot] = ev.value
            else:
                assert mirror.get(slot) == ev.value, f"{name}: delete of {slot} not matching view"
                del mirror[slot]

    def _live_snapshot(self):
        return {
            n: [e for net in self.c.db(n).networks() for e in self._entries(n, net) if not e.deleted]
            for n in self.c.up
        }

    def _check_hidden_not_deleted(self, before):
        """Entries of nodes an observer now believes failed are kept, hidden (moby#53141)."""
        for n, entries in before.items():
            if not self.c.is_up(n):
                continue
            db = self.c.db(n)
            for e in entries:
                if db.node_state(e.owner) != "failed":
                    continue
                got = db.get_entry(e.table, e.network, e.key, include_hidden=True)
                assert got is not None and got.hidden and got.precedence >= e.precedence, f"{n} lost {e}"

    def _entries(self, node, network):
        return self.c.db(node).walk_table(TABLE, network, include_hidden=True, include_deleted=True)

    def _up_joined(self, network):
        return [n for n in self.c.up if network in self.joined[n]]

    def _settle(self):
        self.c.run_for(settle_time(CFG, len(self.c.up)))

    # -- rules -----------------------------------------------------------------------------------

    @rule(data=st.data(), value=st.binary(max_size=3))
    def write(self, data, value):
        choices = [(n, net) for n in self.c.up for net in sorted(self.joined[n])]
        if not choices:
            return
        node, network = data.draw(st.sampled_from(choices))
        for i in data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)):
            key = f"k{i}@{node}"
            e = self.c.call(node, "put_entry", TABLE, network, key, value)
            note(f"{node} put {network}/{key}={value!r} ltime={e.ltime}")
            self.model[(network, key)] = (node, value)

    @rule(data=st.data(), network=st.sampled_from(NETWORKS))
    def delete(self, data, network):
        nodes = self._up_joined(network)
        if not nodes:
            return
        node = data.draw(st.sampled_from(nodes))
        live = [e for e in self.c.db(node).walk_table(TABLE, network, include_hidden=True)]
        mine = [e for e in live if e.owner == node]
        if not mine:
            return
        e = data.draw(st.sampled_from(mine))
        self.c.call(node, "delete_entry", TABLE, network, e.key)
        note(f"{node} delete {network}/{e.key}")
        self.model[(network, e.key)] = (node, None)

    @rule(data=st.data(), network=st.sampled_from(NETWORKS), value=st.binary(max_size=3))
    def overwrite_foreign(self, data, network, value):
        nodes = self._up_joined(network)
        if not nodes:
            return
        node = data.draw(st.sampled_from(nodes))
        foreign = [e for e in self.c.db(node).walk_table(TABLE, network) if e.owner != node]
        if not foreign:
            return
        e = data.draw(st.sampled_from(foreign))
        self.c.call(node, "update_entry", TABLE, network, e.key, value)
        note(f"{node} overwrites {network}/{e.key} of {e.owner}")
        self.contested.add((network, e.key))

    @rule(data=st.data(), network=st.sampled_from(["a", "b"]))
    def join(self, data, network):
        nodes = [n for n in self.c.up if network not in self.joined[n]]
        if not nodes:
            return
        node = data.draw(st.sampled_from(nodes))
        self.c.call(node, "join_network", network)
        self.joined[node].add(network)
        note(f"{node} joins {network}")

    @rule(data=st.data(), network=st.sampled_from(NETWORKS))
    def leave(self, data, network):
        nodes = self._up_joined(network)
        if not nodes:
            return
        node = data.draw(st.sampled_from(nodes))
        self.c.call(node, "leave_network", network)
        self.joined[node].discard(network)
        self._drop_owner(node, network)
        self.floors[node] = {k: v for k, v in self.floors[node].items() if k[0] != network}
        note(f"{node} leaves {network}")

    @rule(data=st.data())
    def partition(self, data):
        up = self.c.up
        if len(up) < 2:
            return
        side = data.draw(st.lists(st.sampled_from(up), min_size=1, max_size=len(up) - 1, unique=True))
        before = self._live_snapshot()
        self.c.partition(sorted(side))
        self._check_hidden_not_deleted(before)
        if self.partitioned_at is None:
            self.partitioned_at = self.c.now
        note(f"partition {sorted(side)} | rest")

    @rule(loss=st.sampled_from([0.0, 0.2, 0.5]))
    def set_loss(self, loss):
        self.c.loss = loss

    @precondition(lambda self: len(self.c.up) > 2)
    @rule(data=st.data(), keep_state=st.booleans())
    def crash(self, data, keep_state):
        owners = sorted({o for (_, _), (o, v) in self.model.items() if v is not None and self.c.is_up(o)})
        pool = owners if owners and data.draw(st.integers(0, 3)) else self.c.up
        node = data.draw(st.sampled_from(pool))
        before = self._live_snapshot()
        self.c.crash(node)
        self._check_hidden_not_deleted(before)
        note(f"crash {node}")
        if data.draw(st.booleans()):
            self._restart(node, keep_state)

    @precondition(lambda self: len(self.c.up) > 2)
    @rule(data=st.data())
    def restart_with_empty_state(self, data):
        """An owner comes back under its name with an empty state directory: its old entries must go."""
        owners = sorted({o for (_, _), (o, v) in self.model.items() if v is not None and self.c.is_up(o)})
        node = data.draw(st.sampled_from(owners or self.c.up))
        before = self._live_snapshot()
        self.c.crash(node)
        self._check_hidden_not_deleted(before)
        self._restart(node, False)

    @precondition(lambda self: len(self.c.up) > 2)
    @rule(data=st.data())
    def leave_cluster(self, data):
        node = data.draw(st.sampled_from(self.c.up))
        self.c.leave(node)
        self.gone.add(node)
        for network in NETWORKS:
            self._drop_owner(node, network)
        note(f"{node} leaves the cluster")

    @rule(dt=st.floats(0.01, 5.0))
    def advance(self, dt):
        if self.partitioned_at is not None:
            dt = min(dt, max(0.0, self.partitioned_at + MAX_PARTITION - self.c.now))
        self.c.run_for(dt)

    @rule(keep_state=st.booleans())
    def heal_and_settle(self, keep_state):
        up = set(self.c.up)
        held = {
            n: [
                e
                for net in self.c.db(n).networks()
                for e in self._entries(n, net)
                if not e.deleted and e.owner in up
            ]
            for n in up
        }
        self.c.heal()
        for n, entries in held.items():  # hidden, not deleted: a heal reveals at once (moby#53141)
            for e in entries:
                got = self.c.db(n).get_entry(e.table, e.network, e.key)
                assert got is not None and got.precedence == e.precedence, f"{n}: {e} not revealed on heal"
        self.partitioned_at = None
        self.c.loss = 0.0
        for node in self.c.names:
            if node not in self.gone and not self.c.is_up(node):
                self._restart(node, keep_state)
        self._settle()
        self._check_converged()

    def teardown(self):
        if hasattr(self, "c"):
            self.heal_and_settle(True)

    # -- model -----------------------------------------------------------------------------------

    def _drop_owner(self, node, network):
        for (net, key), (owner, _) in list(self.model.items()):
            if net == network and owner == node:
                self.model[(net, key)] = (owner, None)

    def _restart(self, node, keep_state):
        reasserted = self.c.restart(node, state=keep_state)
        note(f"restart {node} state={keep_state}")
        if keep_state:
            self.joined[node] = set(self.c.db(node).networks())
            for e in reasserted:
                if (e.network, e.key) in self.model and self.model[(e.network, e.key)][0] == node:
                    self.model[(e.network, e.key)] = (node, e.value)
        else:
            self.joined[node] = {""}
            for network in NETWORKS:
                self._drop_owner(node, network)
        self._new_life(node)

    def _expected(self, network):
        return {
            (TABLE, key): (value, owner)
            for (net, key), (owner, value) in self.model.items()
            if net == network and value is not None and (net, key) not in self.contested
        }

    def _check_converged(self):
        for network in NETWORKS:
            nodes = self._up_joined(network)
            views = {n: self.c.view(n, network) for n in nodes}
            for n, v in views.items():
                note(f"{n} view of {network!r}: {sorted(v.items())}")
            if not views:
                continue
            first = next(iter(views.values()))
            for n, v in views.items():
                assert v == first, f"{network!r}: {n} differs from {next(iter(views))}"
            uncontested = {k: v for k, v in first.items() if (network, k[1]) not in self.contested}
            assert uncontested == self._expected(network), f"network {network!r} != model"

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def safety(self):
        if not hasattr(self, "c"):
            return
        for node in self.c.up:
            db = self.c.db(node)
            held = set(db._store.networks())
            assert held <= set(db.networks()), f"{node} holds entries of {held - set(db.networks())}"
            assert set(db.networks()) == self.joined[node]
            floors = self.floors[node]
            for network in held:
                for e in db.walk_table(TABLE, network, include_hidden=True, include_deleted=True):
                    k = (network, e.slot)
                    if e.deleted:
                        if k not in floors or e.precedence > floors[k]:
                            floors[k] = e.precedence
                    elif k in floors:
                        assert e.precedence > floors[k], f"{node} resurrected {e} over tombstone {floors[k]}"
            self._drain_watch(node)
            visible = {e.slot: e.value for network in db.networks() for e in db.walk_table(TABLE, network)}
            mirror = self.mirrors[node]
            diff = {
                k: (mirror.get(k), visible.get(k))
                for k in set(mirror) | set(visible)
                if mirror.get(k) != visible.get(k)
            }
            assert not diff, f"{node}: watch mirror differs from the view: {diff}"


NetworkDBMachine.TestCase.settings = settings.get_profile(PROFILE)
TestNetworkDBMachine = NetworkDBMachine.TestCase
