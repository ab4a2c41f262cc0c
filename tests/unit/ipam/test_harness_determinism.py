"""Same seed, same trace hash: the IPAM harness (and the cores it drives) are a pure function of the seed,
also across processes with different string-hash seeds (no iteration over unordered sets leaks into a
run). The rule machine's counterpart is ``test_same_seed_same_trace_hashes`` in
``tests/stateful/test_ipam_machine.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meshnet.ipam import fast

from .ipam_harness import Cluster
from .safety import Safety

CFG = fast().with_(
    vni_last=4096 + 16 * 16 - 1, vni_block_size=16, default_pool="10.0.0.0/20", default_pool_prefix=28
)
ROOT = Path(__file__).resolve().parents[3]


def scenario(seed: int) -> tuple[str, int]:
    """Networks, allocations, loss/duplication/reordering, a partition, crashes in the middle of an
    input, restarts with and without state, a reclaim, healing. Returns (trace hash, messages delivered)."""
    c = Cluster(4, config=CFG, seed=seed, loss=0.1, dup=0.2, jitter=0.5)
    safety = Safety(c)
    c.call("h0", "create_network", "n0", subnets=["10.10.0.0/22"])
    c.call("h1", "create_network", "n1", subnets=None)
    c.run_for(1.0)
    for h in c.hosts:
        for net in ("n0", "n1"):
            c.call(h, "attach", net)
    c.run_for(3.0)
    for i in range(6):
        for h in c.hosts:
            c.call(h, "allocate", "n0", tag=f"{h}-{i}")
    c.run_for(5.0)
    c.partition(["h3"])
    c.crash_after("h1", 2)
    for i in range(20):
        c.call("h3", "allocate", "n0", tag=f"cut-{i}")
    c.run_for(3.0)
    if not c.is_up("h1"):
        c.restart("h1", state=True)
    c.crash("h2")
    c.destroy("h2")
    c.call("h0", "reclaim", ["h2"])
    c.run_for(2.0)
    c.restart("h2", state=False)
    c.heal()
    c.run_for(40.0)
    safety.check()
    return c.trace_hash(), c.delivered


def test_same_seed_same_trace_hash():
    a, b = scenario(7), scenario(7)
    assert a == b
    assert a[1] > 50  # the scenario did something


def test_another_seed_another_trace():
    assert scenario(7)[0] != scenario(8)[0]


def test_trace_hash_does_not_depend_on_the_string_hash_seed():
    code = "from tests.unit.ipam.test_harness_determinism import scenario; print(scenario(7)[0])"
    here = scenario(7)[0]
    for hashseed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == here, f"PYTHONHASHSEED={hashseed} changed the trace"
