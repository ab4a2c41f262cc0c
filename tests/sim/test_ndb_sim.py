"""``sim.ndb``: NetworkDB riding Swim in the simulator (wiring, state directory, determinism)."""

from __future__ import annotations

import pytest

from meshnet.gossip.config import lan
from meshnet.networkdb import fast
from sim.bootstrap import bootstrap_converged
from sim.ndb import NdbSim

pytest.importorskip("meshnet.gossip.swim")


def _sim(seed: int = 1) -> NdbSim:
    s = NdbSim(5, seed=seed, gossip_config=lan(), ndb_config=fast())
    bootstrap_converged(s.c)
    for node in s.c.nodes:
        s.join_network(node, "a")
    s.c.run_for(1.0)
    return s


def views(s: NdbSim) -> list[dict]:
    return [s.view(n, "a", ("t",)) for n in s.c.live_nodes()]


def test_spread_hide_restart_and_wipe() -> None:
    s = _sim()
    s.put(0, "a", "t", "k1", b"v1")
    s.put(2, "a", "t", "k2", b"v2")
    s.c.run_for(1.0)
    both = {("t", "k1"): b"v1", ("t", "k2"): b"v2"}
    assert views(s) == [both] * 5
    s.delete(0, "a", "t", "k1")
    s.c.run_for(1.0)
    assert views(s) == [{("t", "k2"): b"v2"}] * 5
    s.c.crash(2)
    s.c.run_for(30.0)  # detected failed: its entries are hidden, not erased
    assert views(s) == [{}] * 4
    assert s.db(0).get_entry("t", "a", "k2", include_hidden=True) is not None
    s.restart(2, [s.c.nodes[0]])  # with its state directory: re-asserts k2
    s.c.run_for(5.0)
    assert views(s) == [{("t", "k2"): b"v2"}] * 5
    s.c.crash(2)
    s.restart(2, [s.c.nodes[0]], wipe=True)  # empty state directory: k2 deleted cluster-wide
    s.c.run_for(10.0)
    assert views(s) == [{}] * 5
    assert s.c.violations == []


def test_deterministic() -> None:
    hashes = []
    for _ in range(2):
        s = _sim(seed=4)
        s.put(1, "a", "t", "k", b"v")
        s.c.run_for(3.0)
        hashes.append(s.c.trace.hexdigest())
    assert hashes[0] == hashes[1]
