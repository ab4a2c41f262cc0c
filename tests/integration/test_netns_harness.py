"""The netns harness (``sim/netns``): three hosts come up and converge, and ``down`` leaves nothing behind,
also after the harness itself crashed.

Each test uses its own namespace prefix and run directory (``Harness(prefix=..., run_dir=tmp_path)``), so a
running demo (prefix ``""``, /run/meshnet-netns) is never touched. Every test starts with a ``down`` of its
prefix (a crashed earlier run of the same test is cleaned first) and ends with one in ``finally``.

Waits: ``up`` waits for convergence itself (60 s bound: a few gossip intervals on the local profile, with a
lot of room for 8 engineers on 2 cores); agents stop within STOP_GRACE (8 s) + KILL_WAIT (5 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.netns import Harness, HarnessError, host_addr, list_netns, wait_until
from sim.netns.harness import _alive, _proc_start

pytestmark = [pytest.mark.root, pytest.mark.hang_guard(240)]

PREFIX = "tnh-"


def _root_net() -> tuple[str, str, str]:
    """The root namespace's links, addresses and routes, to show the harness never changes them."""
    out = []
    for args in (["-br", "link"], ["-br", "addr"], ["route", "show", "table", "all"]):
        out.append(subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout)
    return out[0], out[1], out[2]


def _ours(prefix: str) -> list[str]:
    return [n for n in list_netns() if n.startswith(prefix)]


def _assert_clean(h: Harness, pids: list[tuple[int, int | None]]) -> None:
    assert _ours(h.prefix) == []
    assert [p for p, s in pids if _alive(p, s)] == []
    assert not h.run_dir.exists(), sorted(os.listdir(h.run_dir))


@pytest.fixture
def harness(tmp_path: Path):
    h = Harness(prefix=PREFIX, run_dir=tmp_path / "run", die_with_parent=True, dataplane="none")
    h.down()  # a previous crashed run of this test
    try:
        yield h
    finally:
        h.down()


def test_up_converges_and_down_leaves_nothing(harness: Harness) -> None:
    before = _root_net()
    harness.up(3)
    st = harness.state()
    assert sorted(st["hosts"]) == ["h1", "h2", "h3"]
    for host in ("h1", "h2", "h3"):
        members = {m["name"]: m for m in harness.members(host)}
        assert {n: m["state"] for n, m in members.items()} == {"h1": "alive", "h2": "alive", "h3": "alive"}
        assert members[host]["addr"] == host_addr(int(host[1:]))
    # Each agent runs inside its own host namespace, on the underlay.
    root_ns = os.stat("/proc/self/ns/net").st_ino
    for host, rec in st["hosts"].items():
        assert os.stat(f"/proc/{rec['pid']}/ns/net").st_ino == os.stat(f"/run/netns/{PREFIX}{host}").st_ino
        assert os.stat(f"/proc/{rec['pid']}/ns/net").st_ino != root_ns
        # ...but in the machine's mount namespace, so the namespaces it creates are usable from outside.
        assert os.stat(f"/proc/{rec['pid']}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    ping = harness.exec("h1", ["ping", "-c", "1", "-W", "2", host_addr(3)])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert sorted(_ours(PREFIX)) == [f"{PREFIX}h1", f"{PREFIX}h2", f"{PREFIX}h3", f"{PREFIX}mnu"]
    assert _root_net() == before  # nothing in the root namespace changed
    with pytest.raises(HarnessError, match="already up"):
        harness.up(2)

    pids = [(rec["pid"], rec["start"]) for rec in st["hosts"].values()]
    report = harness.down()
    assert sorted(report["stopped"]) == sorted(p for p, _ in pids)
    _assert_clean(harness, pids)
    assert _root_net() == before
    assert harness.down()["netns"] == []  # idempotent


def test_down_after_the_bookkeeping_is_lost(harness: Harness) -> None:
    harness.up(3)
    pids = [(rec["pid"], rec["start"]) for rec in harness.state()["hosts"].values()]
    harness.state_path.unlink()  # the harness's records are gone; agents and namespaces are not
    assert harness.state() == {}
    assert all(_alive(p, s) for p, s in pids)
    report = harness.down()
    assert sorted(report["stopped"] + report["killed"]) == sorted(p for p, _ in pids)
    _assert_clean(harness, pids)


def test_down_after_the_harness_process_is_killed_mid_up(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prefix = "tnk-"
    h = Harness(prefix=prefix, run_dir=run)
    h.down()
    cli = [sys.executable, "-m", "sim.netns", "--prefix", prefix, "--run-dir", str(run)]
    up = subprocess.Popen(
        [*cli, "up", "--hosts", "4", "--dataplane", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids: list[tuple[int, int | None]] = []
    try:
        # Kill it once the first agent is recorded: it is then waiting for that agent's API (an agent
        # needs well over the 10 ms poll to start Python and bind), so the kill lands mid-up.
        def first_agent_recorded() -> bool:
            assert up.poll() is None, "up finished before it could be killed"
            try:
                return "h1" in json.loads((run / "harness.json").read_text()).get("hosts", {})
            except (FileNotFoundError, ValueError):
                return False

        wait_until(first_agent_recorded, 60, "the first agent to be recorded", interval=0.01)
        up.send_signal(signal.SIGKILL)
        assert up.wait(timeout=10) == -signal.SIGKILL
        rec = json.loads((run / "harness.json").read_text())["hosts"]["h1"]
        pids = [(rec["pid"], rec["start"])]
        assert _alive(rec["pid"], rec["start"])  # the agent survived its harness
        assert f"{prefix}mnu" in list_netns()
        # up refuses to start over the wreck; down (a fresh process) cleans it.
        again = subprocess.run([*cli, "up", "--hosts", "2"], capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "down" in again.stderr
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _proc_start(rec["pid"]) is not None:
            time.sleep(0.05)  # reaped by its new parent
        _assert_clean(h, pids)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        h.down()


def test_a_failing_up_removes_what_it_created(tmp_path: Path) -> None:
    h = Harness(prefix="tnf-", run_dir=tmp_path / "run", agent="/bin/false", dataplane="none")
    h.down()
    try:
        with pytest.raises(HarnessError, match="agent h1 .* is not running"):
            h.up(2)
        assert _ours("tnf-") == []
        assert not h.run_dir.exists()
    finally:
        h.down()


def test_containers_reach_each_other_and_down_removes_the_agents_namespaces(tmp_path: Path) -> None:
    """With the kernel dataplane: containers on two hosts ping each other over the overlay through ``exec``;
    then, with the bookkeeping lost, ``down`` still removes the namespaces the agents created (overlay and
    sandbox namespaces, their /etc/netns files)."""
    h = Harness(prefix="tnc-", run_dir=tmp_path / "run", die_with_parent=True, dataplane="kernel")
    h.down()
    try:
        h.up(2)
        a = h.container("a", host="h1", network="n1")
        b = h.container("b", host=2, network="n1")
        assert (a["netns"], b["netns"]) == ("tnc-h1-sb-a", "tnc-h2-sb-b")
        assert a["ip"] and b["ip"] and a["ip"] != b["ip"]
        with pytest.raises(HarnessError, match="exists"):
            h.container("a", host="h2", network="n1")
        # Bounded: the overlay answers once each host programmed the other's endpoint (about a second).
        wait_until(
            lambda: h.exec("b", ["ping", "-c", "1", "-W", "1", a["ip"]]).returncode == 0,
            30,
            "b to reach a over the overlay",
            interval=0.2,
        )
        assert h.exec("a", ["ping", "-c", "1", "-W", "2", b["ip"]]).returncode == 0
        created = _ours("tnc-")
        assert "tnc-h1-sb-a" in created and any(n.startswith("tnc-h2-ov-") for n in created)
        pids = [(rec["pid"], rec["start"]) for rec in h.state()["hosts"].values()]
        h.state_path.unlink()
        h.down()
        _assert_clean(h, pids)
        etc = Path("/etc/netns")
        assert not (etc.is_dir() and [n for n in os.listdir(etc) if n.startswith("tnc-")])
    finally:
        h.down()
