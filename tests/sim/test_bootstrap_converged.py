"""``--bootstrap converged``: nodes start with the full view (steady state), deterministically."""

from __future__ import annotations

import pytest

from meshnet.gossip.config import lan
from sim.__main__ import main
from sim.bootstrap import bootstrap_converged
from sim.checks import members_agree, membership_converged
from sim.cluster import Cluster
from sim.trace import Trace

pytest.importorskip("meshnet.gossip.swim")


def _boot(n: int, seed: int) -> tuple[Cluster, dict, Trace]:
    trace = Trace()
    c = Cluster(n, seed=seed, config=lan(), link="lan", trace=trace)
    return c, bootstrap_converged(c), trace


def test_starts_converged_and_stays_quiet() -> None:
    c, info, _ = _boot(40, seed=3)
    # Converged right after the directory's reply (a few ms), through the cores' own member tables.
    assert info["converged_at"] < 0.05
    assert membership_converged(c)
    assert members_agree(c) == []
    # Every merge queued one alive per member (itself included); all were cut before any gossip.
    assert info["queued_cut"] == 40 * 40
    assert info["parts_cut"] == 0
    c.run_for(10.0)
    assert membership_converged(c)
    assert c.violations == []


def test_same_seed_same_trace() -> None:
    hashes = []
    for _ in range(2):
        c, _, trace = _boot(30, seed=7)
        c.crash(c.nodes[5])
        c.run_for(15.0)
        hashes.append(trace.hexdigest())
    c, _, trace = _boot(30, seed=8)
    c.crash(c.nodes[5])
    c.run_for(15.0)
    assert hashes[0] == hashes[1] != trace.hexdigest()


def test_cli_converged_mode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "gossip",
        "--nodes",
        "30",
        "--duration",
        "20",
        "--bootstrap",
        "converged",
        "--kill",
        "1",
        "--seed",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("bootstrap: converged")
    assert "join_converged_after_last_start: 0.0" in out
    assert "false_deaths: 0" in out
