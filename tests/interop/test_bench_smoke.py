"""bench/gossip_vs_serf.py still runs end to end (3 + 3 agents, one kill each): benches must not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gossip_vs_serf.py"

pytestmark = [pytest.mark.interop, pytest.mark.hang_guard(240)]


def test_gossip_vs_serf_smoke(tmp_path: Path, serf_bin: str) -> None:
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(BENCH), "--nodes", "3", "--kills", "1", "--idle", "2", "--settle", "1"]
    argv += ["--between", "0.5", "--seed", "3", "--serf", serf_bin, "--json", str(out)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=200, stdin=subprocess.DEVNULL)
    print(run.stdout, run.stderr)
    assert run.returncode == 0, f"bench exit code {run.returncode}"
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"serf", "meshnet"}
    for impl, result in results.items():
        figures = result["figures"]
        assert result["error"] is None, f"{impl}: {result['error']}"
        assert figures["kills_fully_detected"] == "1/1", f"{impl}: {figures['kills']}"
        assert 0 < figures["detect_p50_s"] < 60
        assert figures["rss_mib_median"] > 1
        assert figures["join_convergence_s"] > 0
