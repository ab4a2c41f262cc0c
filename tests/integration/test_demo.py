"""The README's first quick-start command, ``scripts/demo``, run non-interactively (``--check``): it must
succeed, show what it promises, and leave nothing behind; Ctrl-C in the middle tears down too.

Each run uses its own namespace prefix and run directory (``--prefix``/``--run-dir``), so a demo left
running on this machine is not touched. Bounds: ``scripts/demo`` first runs ``scripts/bootstrap`` (quick
when everything is installed), then the demo waits at most 60 s for convergence and 30 s per reachability
check; 240 s covers it on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim.netns import Harness, list_netns, wait_until

pytestmark = [pytest.mark.root, pytest.mark.hang_guard(300)]

REPO = Path(__file__).resolve().parents[2]


def _root_net() -> list[str]:
    return [
        subprocess.run(["ip", *a], capture_output=True, text=True, check=True).stdout
        for a in (["-br", "link"], ["-br", "addr"], ["route", "show", "table", "all"])
    ]


def _agent_pids(run: Path) -> list[tuple[int, int | None]]:
    try:
        hosts = json.loads((run / "harness.json").read_text()).get("hosts", {})
    except (FileNotFoundError, ValueError):
        return []
    return [(h["pid"], h.get("start")) for h in hosts.values()]


def _assert_clean(prefix: str, run: Path, pids: list[tuple[int, int | None]]) -> None:
    from sim.netns.harness import _alive

    assert [n for n in list_netns() if n.startswith(prefix)] == []
    assert not run.exists()
    assert [p for p, s in pids if _alive(p, s)] == []


def test_demo_check_succeeds_and_leaves_nothing(tmp_path: Path) -> None:
    prefix, run = "tdm-", tmp_path / "run"
    harness = Harness(prefix=prefix, run_dir=run)
    harness.down()
    kernel = harness.agent_supports_kernel()
    before = _root_net()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    try:
        proc = subprocess.run(
            [str(REPO / "scripts" / "demo"), "--check", "--prefix", prefix, "--run-dir", str(run)],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=REPO,
        )
        out = proc.stdout
        assert proc.returncode == 0, f"{out}\n{proc.stderr}"
        assert "demo check passed; everything removed" in out
        for host, addr in (("h1", "10.77.0.11"), ("h2", "10.77.0.12"), ("h3", "10.77.0.13")):
            assert f"{host}    {addr}:7946  alive" in out  # meshnetctl members from h1
        if kernel:
            assert "container client" in out and "exec client -- ping" in out
            assert "3 received, 0% packet loss" in out  # client pings web over the overlay
            assert "dst 10.77.0.11" in out  # h2's FDB: web's MAC behind h1's VTEP
            assert "64 bytes from web.demo (" in out  # by name, through the DNS service
        else:
            assert "greeting  hello from h1  h1" in out  # the entry listed on h3
        _assert_clean(prefix, run, [])
        assert _root_net() == before
    finally:
        harness.down()


def test_demo_interrupted_mid_up_tears_down(tmp_path: Path) -> None:
    prefix, run = "tdi-", tmp_path / "run"
    harness = Harness(prefix=prefix, run_dir=run)
    harness.down()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshnet.demo",
            "--check",
            "--hosts",
            "4",
            "--prefix",
            prefix,
            "--run-dir",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    pids: list[tuple[int, int | None]] = []
    try:

        def agent_started() -> bool:
            assert demo.poll() is None, "the demo ended before it could be interrupted"
            return bool(_agent_pids(run))

        wait_until(agent_started, 60, "the demo's first agent", interval=0.01)
        pids = _agent_pids(run)
        demo.send_signal(signal.SIGINT)  # Ctrl-C (the agents run in their own sessions)
        out, _ = demo.communicate(timeout=60)
        assert demo.returncode == 130, out
        assert "interrupted: tearing down" in out and "torn down:" in out
        _assert_clean(prefix, run, pids)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        harness.down()
