"""Hypothesis rule machine over the simulator: NetworkDB riding real Swim cores (``sim.ndb.NdbSim``).

Rules: creates/updates (``put``), deletes, network joins and leaves, partitions, loss, crashes and
restarts (with the node's state directory, or an empty one), and time. Keys are prefixed by their
writer (``n1-0``), so each key has one writer and the reference model is a plain dict per network.

Safety, after every step (every running node):

* no resurrection: once a node (in one life, and since it last joined that network) has held a
  tombstone for a key, it never shows a visible entry of that key at a version <= that tombstone;
* partitioning: a node holds no entry (live, hidden or tombstone) of a network it has not joined.

Liveness (``heal_and_settle``): heal, loss off, restart every crashed node with its state directory,
then within ``settle_bound`` every running node's visible view of each network it joined equals the
model. ``settle_bound`` (config-derived, see ``settle_bound``):

    membership(N)                       # the gossip machine's bound: detection or reconnect, one
                                        # push-pull period, gossip spread
  + state_sync_period(state_sync_interval, N)   # attachments reach everyone
  + bulk_sync_attempts * (bulk_sync_interval + bulk_sync_timeout)   # entries repaired by bulk sync
  + retransmit_limit(retransmit_mult, N) / gossip_nodes * gossip_interval   # last gossip spread
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meshnet.gossip.config import lan
from meshnet.gossip.util import push_pull_scale
from meshnet.networkdb import fast
from meshnet.networkdb.config import retransmit_limit, state_sync_period
from sim.bootstrap import bootstrap_converged
from sim.checks import suspicion_timeout_bounds
from sim.ndb import NdbSim

pytest.importorskip("meshnet.gossip.swim")

settings.register_profile(
    "ndb-sim-machine-ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ndb-sim-machine-dev",
    deadline=None,
    max_examples=100,
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow],
)

GCFG = lan()
NCFG = fast()
N = 4
NETS = ("a", "b")
TABLES = ("t",)
KEYS = 3
LOSS = 0.1


def membership_bound(cfg, n: int) -> float:
    """The gossip machine's settle bound (tests/stateful/test_gossip_machine.py explains each term)."""
    _, smax = suspicion_timeout_bounds(cfg, n)
    detect = 2 * cfg.awareness_max_multiplier * cfg.probe_interval + smax
    back = max(2 * cfg.reconnect_interval, cfg.rejoin_interval) + cfg.tcp_timeout
    limit = cfg.retransmit_mult * math.ceil(math.log10(n + 1))
    spread = (limit / cfg.gossip_nodes + 2 * math.ceil(math.log2(max(2, n)))) * cfg.gossip_interval
    return max(detect, back) + push_pull_scale(cfg.push_pull_interval, n) + spread


def settle_bound(gcfg, ncfg, n: int) -> float:
    """Virtual seconds after the heal by which every view equals the model (module docstring)."""
    return (
        membership_bound(gcfg, n)
        + state_sync_period(ncfg.state_sync_interval, n)
        + ncfg.bulk_sync_attempts * (ncfg.bulk_sync_interval + ncfg.bulk_sync_timeout)
        + retransmit_limit(ncfg.retransmit_mult, n) / ncfg.gossip_nodes * ncfg.gossip_interval
    )


BOUND = settle_bound(GCFG, NCFG, N)


class NdbSimMachine(RuleBasedStateMachine):
    """See the module docstring."""

    @initialize(seed=st.integers(0, 2**16))
    def boot(self, seed: int) -> None:
        self.s = NdbSim(N, seed=seed, gossip_config=GCFG, ndb_config=NCFG)
        self.c = self.s.c
        bootstrap_converged(self.c)
        #: model[network][(table, key)] = value
        self.model: dict[str, dict[tuple[str, str], bytes]] = {net: {} for net in NETS}
        #: (node, life, network) -> {(table, key): highest tombstone version seen}
        self.tombs: dict[tuple[str, int, str], dict[tuple[str, str], tuple[int, str]]] = {}
        self.counter = 0

    # -- helpers ----------------------------------------------------------------------------------

    def live(self) -> list[str]:
        return sorted(x.name for x in self.c.live_nodes())

    def down(self) -> list[str]:
        return sorted(x.name for x in self.c.nodes if not x.running)

    def joined(self, name: str) -> list[str]:
        return sorted(self.c.node(name).state.get("networks", ()))

    def writable(self) -> list[tuple[str, str]]:
        return [(n, net) for n in self.live() for net in self.joined(n)]

    def owned(self) -> list[tuple[str, str, str, str]]:
        out = []
        for n in self.live():
            for net, table, key in sorted(self.c.node(n).state.get("own", {})):
                out.append((n, net, table, key))
        return out

    def note_tail(self) -> None:
        note(f"t={self.c.now:.3f}\n{self.c.trace.tail(30)}")

    def drop_owner(self, name: str, network: str | None = None) -> None:
        for net in NETS if network is None else (network,):
            for slot in [s for s in self.model[net] if s[1].startswith(name + "-")]:
                del self.model[net][slot]

    # -- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: self.writable())
    @rule(data=st.data(), k=st.integers(0, KEYS - 1), table=st.sampled_from(TABLES))
    def put(self, data: st.DataObject, k: int, table: str) -> None:
        name, net = data.draw(st.sampled_from(self.writable()), label="writer")
        self.counter += 1
        value = f"v{self.counter}".encode()
        key = f"{name}-{k}"
        self.s.put(name, net, table, key, value)
        self.model[net][(table, key)] = value

    @precondition(lambda self: self.owned())
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name, net, table, key = data.draw(st.sampled_from(self.owned()), label="delete")
        self.s.delete(name, net, table, key)
        del self.model[net][(table, key)]

    @precondition(lambda self: self.live())
    @rule(data=st.data(), net=st.sampled_from(NETS))
    def join_network(self, data: st.DataObject, net: str) -> None:
        name = data.draw(st.sampled_from(self.live()), label="joiner")
        if net not in self.joined(name):
            self.s.join_network(name, net)

    @precondition(lambda self: self.writable())
    @rule(data=st.data())
    def leave_network(self, data: st.DataObject) -> None:
        name, net = data.draw(st.sampled_from(self.writable()), label="leaver")
        self.s.leave_network(name, net)
        self.drop_owner(name, net)
        node = self.c.node(name)
        self.tombs.pop((name, node.life, net), None)

    @precondition(lambda self: len(self.live()) > 1)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.c.crash(data.draw(st.sampled_from(self.live()), label="crash"))

    @precondition(lambda self: self.down())
    @rule(data=st.data(), wipe=st.booleans())
    def restart(self, data: st.DataObject, wipe: bool) -> None:
        name = data.draw(st.sampled_from(self.down()), label="restart")
        seeds = [
            x for x in self.live() if self.c.network.connected(self.c.node(name).idx, self.c.node(x).idx)
        ]
        self.s.restart(name, seeds[:2], wipe=wipe)
        if wipe:
            self.drop_owner(name)

    @precondition(lambda self: len(self.c.running_nodes()) >= 2)
    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        running = sorted(x.name for x in self.c.running_nodes())
        side = data.draw(
            st.lists(st.sampled_from(running), min_size=1, max_size=len(running) - 1, unique=True),
            label="side",
        )
        self.c.partition([side])

    @precondition(lambda self: self.c.network.is_partitioned)
    @rule()
    def heal(self) -> None:
        self.c.heal()

    @rule(on=st.booleans())
    def loss(self, on: bool) -> None:
        self.c.set_loss(LOSS if on else 0.0)

    @rule(ms=st.integers(1, 5000))
    def advance(self, ms: int) -> None:
        self.c.run_for(ms / 1000)

    def expected(self, name: str) -> dict[str, dict[tuple[str, str], bytes]]:
        return {net: self.model[net] for net in self.joined(name)}

    def actual(self, name: str) -> dict[str, dict[tuple[str, str], bytes]]:
        return {net: self.s.view(name, net, TABLES) for net in self.joined(name)}

    def agree(self) -> list[str]:
        return [n for n in self.live() if self.actual(n) != self.expected(n)]

    @rule()
    def heal_and_settle(self) -> None:
        self.c.heal()
        self.c.set_loss(0.0)
        for name in self.down():
            self.s.restart(name, self.live()[:2])
        t0 = self.c.now
        ok = self.c.run_until_true(lambda: not self.agree(), timeout=BOUND, every=0.25)
        if ok is None:
            self.note_tail()
            bad = self.agree()[0]
            raise AssertionError(
                f"{BOUND:.1f}s after heal {bad} holds {self.actual(bad)}, model {self.expected(bad)}"
            )
        note(f"settled in {ok - t0:.2f}s (bound {BOUND:.1f}s)")

    # -- safety -----------------------------------------------------------------------------------

    @invariant()
    def safety(self) -> None:
        if not hasattr(self, "s"):
            return
        for node in self.c.running_nodes():
            db = node.rider
            mine = set(db.networks())
            for net in NETS:
                held = [
                    e
                    for t in TABLES
                    for e in db.walk_table(t, net, include_hidden=True, include_deleted=True)
                ]
                if net not in mine:
                    assert not held, f"{node.name} holds {len(held)} entries of {net!r}, not joined"
                    continue
                tombs = self.tombs.setdefault((node.name, node.life, net), {})
                for e in held:
                    slot = (e.table, e.key)
                    ver = (e.ltime, e.owner)
                    if e.deleted:
                        if ver > tombs.get(slot, (-1, "")):
                            tombs[slot] = ver
                    elif not e.hidden and slot in tombs and ver <= tombs[slot]:
                        self.note_tail()
                        raise AssertionError(
                            f"{node.name}: {net}/{slot} reappeared at {ver} after tombstone {tombs[slot]}"
                        )

    def teardown(self) -> None:
        if hasattr(self, "s") and self.live():
            self.heal_and_settle()


TestNdbSimMachine = NdbSimMachine.TestCase
TestNdbSimMachine.settings = settings.get_profile(
    "ndb-sim-machine-" + os.environ.get("MESHNET_NDB_SIM_MACHINE_PROFILE", "ci")
)
