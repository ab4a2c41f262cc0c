"""Hypothesis rule machine over the simulator: random joins, crashes, restarts, partitions, loss and
time, with safety checked after every step and liveness after every ``heal_and_settle``.

Safety (``sim.checks.SafetyMonitor``, after every step):

* incarnations only grow: for each observer life and member (until the member is reaped), and each
  running core's own incarnation;
* a running node never emits ``MemberFailed`` about itself nor holds itself ``dead`` (or ``left``
  without having called ``leave``);
* no false deaths: a ``MemberFailed`` about a node that is running is a violation when loss is 0, no
  partition is in force, and the network has been clean (and the node up) for longer than
  ``awareness_max_multiplier * probe_interval + suspicion_max(N) + 2 s``. A node on the far side of a
  partition is not reachable, and a suspicion started during a fault may end after the heal.

Liveness (``heal_and_settle``): heal every partition, turn loss off, restart the crashed nodes, then
run ``settle_bound(N)`` seconds; every running node must see exactly the running set as alive (read
from ``members()``, state ``alive``).
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, assume, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meshnet.gossip.config import lan
from meshnet.gossip.util import push_pull_scale
from sim.checks import SafetyMonitor, members_agree, membership_converged, suspicion_timeout_bounds
from sim.cluster import Cluster

pytest.importorskip("meshnet.gossip.swim")

# Profiles are applied to this machine only (never loaded globally: other test files keep theirs).
settings.register_profile(
    "gossip-machine-ci",
    derandomize=True,
    deadline=None,
    max_examples=50,
    stateful_step_count=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "gossip-machine-dev",
    deadline=None,
    max_examples=50,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow],
)

CFG = lan()
MAX_NODES = 7
LOSS = 0.1


def settle_bound(cfg, n: int) -> float:
    """Virtual seconds after heal_and_settle by which every live node must agree on the live set.

    The slowest path back to agreement is the sum of:

    * a crash just before the heal still has to be detected: the probe period can be stretched by
      Lifeguard awareness to ``awareness_max_multiplier * probe_interval`` (loss raises it), twice
      (one round to reach the node, one for the probe), then the suspicion maximum
      ``suspicion_max_timeout_mult * suspicion_mult * max(1, log10 n) * probe_interval``;
    * nodes the two sides declared dead come back through serf's reconnect to failed members
      (every ``reconnect_interval``, taken with probability failed/alive, so we allow two intervals)
      or the rejoin of the seeds when a node sees nobody alive (``rejoin_interval``): the larger of
      the two, plus one ``tcp_timeout`` for the push-pull;
    * then the news (alive refutations, the rejoined node's alive) spreads: ``retransmit_mult *
      ceil(log10(n + 1)) / gossip_nodes + 2 * ceil(log2 n)`` gossip rounds -- but a transmit-limited
      rumour can miss a node even without loss (each node sends it only ``retransmit_limit`` times
      to random members), and then only anti-entropy repairs it: one push-pull period
      (``push_pull_interval``, scaled above 32 nodes) in which the node pulls from a random member.

    bound = max(detect, back) + push_pull_period(n) + spread
    """
    _, smax = suspicion_timeout_bounds(cfg, n)
    detect = 2 * cfg.awareness_max_multiplier * cfg.probe_interval + smax
    back = max(2 * cfg.reconnect_interval, cfg.rejoin_interval) + cfg.tcp_timeout
    limit = cfg.retransmit_mult * math.ceil(math.log10(n + 1))
    spread = (limit / cfg.gossip_nodes + 2 * math.ceil(math.log2(max(2, n)))) * cfg.gossip_interval
    return max(detect, back) + push_pull_scale(cfg.push_pull_interval, n) + spread


class GossipMachine(RuleBasedStateMachine):
    """See the module docstring."""

    @initialize(n=st.integers(2, 4), seed=st.integers(0, 2**16))
    def boot(self, n: int, seed: int) -> None:
        self.c = Cluster(MAX_NODES, seed=seed, config=CFG, link="lan")
        self.c.bootstrap(self.c.nodes[:n], stagger=0.1, seeds_per_join=2, start_at=0.0)
        self.c.run_for(0.1 * n)
        ok = self.c.run_until_true(lambda: membership_converged(self.c), timeout=30.0)
        assert ok is not None, "initial cluster did not converge"
        self.mon = SafetyMonitor(self.c)
        self.lossy = False

    # -- helpers ----------------------------------------------------------------------------------

    def live(self) -> list[str]:
        return sorted(x.name for x in self.c.live_nodes())

    def down(self) -> list[str]:
        """Nodes that ran before and are now crashed."""
        return sorted(x.name for x in self.c.nodes if not x.running and x.life > 0)

    def fresh(self) -> list[str]:
        return sorted(x.name for x in self.c.nodes if x.life == 0)

    def note_tail(self) -> None:
        note(f"t={self.c.now:.3f}\n{self.c.trace.tail(30)}")

    # -- rules ------------------------------------------------------------------------------------

    def seeds_for(self, data: st.DataObject, name: str) -> list[str]:
        """1-2 seeds among the live nodes ``name`` can reach now (a deployment joins through a seed
        it can reach; see ``test_scenarios.test_partial_join_island`` for what happens otherwise)."""
        me = self.c.node(name)
        reachable = [x for x in self.live() if self.c.network.connected(me.idx, self.c.node(x).idx)]
        assume(reachable)
        return data.draw(
            st.lists(st.sampled_from(reachable), min_size=1, max_size=2, unique=True), label="seeds"
        )

    @precondition(lambda self: self.fresh() and self.live())
    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.fresh()), label="joiner")
        self.c.start(name, self.seeds_for(data, name))

    @precondition(lambda self: len(self.live()) > 1)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.c.crash(data.draw(st.sampled_from(self.live()), label="crash"))

    @precondition(lambda self: self.down() and self.live())
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.down()), label="restart")
        self.c.restart(name, self.seeds_for(data, name))

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
        self.lossy = on
        self.c.set_loss(LOSS if on else 0.0)

    @rule(ms=st.integers(1, 8000))
    def advance(self, ms: int) -> None:
        self.c.run_for(ms / 1000)

    @rule()
    def heal_and_settle(self) -> None:
        """Heal, loss off, restart every crashed node (a node whose only seeds crashed could never
        find the cluster again otherwise), then wait ``settle_bound`` and require agreement."""
        self.c.heal()
        self.c.set_loss(0.0)
        for name in self.down():
            self.c.restart(name, [self.c.node(s) for s in self.live()[:2]])
        bound = settle_bound(CFG, MAX_NODES)
        self.c.run_for(bound)
        problems = members_agree(self.c, strict=True)
        if problems:
            self.note_tail()
        assert not problems, f"{bound:.1f}s after heal: {problems}"

    # -- safety -----------------------------------------------------------------------------------

    @invariant()
    def safety(self) -> None:
        try:
            self.mon.check()
        except AssertionError:
            self.note_tail()
            raise

    def teardown(self) -> None:
        if hasattr(self, "c") and self.live():
            self.heal_and_settle()


TestGossipMachine = GossipMachine.TestCase
TestGossipMachine.settings = settings.get_profile(
    "gossip-machine-" + os.environ.get("MESHNET_GOSSIP_MACHINE_PROFILE", "ci")
)
