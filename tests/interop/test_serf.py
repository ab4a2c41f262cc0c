"""meshnet agents in one cluster with real serf 0.9.4 agents (memberlist-wire.md section 12).

Each case runs twice (``lab`` fixture): plaintext, and encrypted with one AES key that every agent loads
from a keyring file in serf's JSON format. All agents use the ``local`` timing profile on 127.0.0.x.

Deadlines come from the local profile (probe 1 s, suspicion multiplier 3, max multiplier 6): with three
members a failure is declared after about 3-6 s once a second member confirms the suspicion, and 18 s
(the suspicion maximum) at worst, so 30 s means "not detected at all", not "slow".
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.interop.conftest import Lab
from tests.interop.serfctl import MeshnetAgent, SerfAgent, fmt_addr, meshnet_command, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.hang_guard(180)]

JOIN_S = 20.0
DETECT_S = 30.0
LEAVE_S = 20.0


def _alive_everywhere(observers: list[SerfAgent | MeshnetAgent], names: set[str]) -> bool:
    for agent in observers:
        members = agent.members()
        if any(name not in members or members[name].status != "alive" for name in names):
            return False
    return True


def _views(observers: list[SerfAgent | MeshnetAgent]) -> str:
    lines = []
    for agent in observers:
        try:
            members = agent.members()
            view = ", ".join(f"{m.name}={m.status}" for m in members.values())
        except Exception as exc:
            view = f"<{exc}>"
        lines.append(f"{agent.name} sees: {view}")
    return "\n".join(lines)


def _serf_pair(lab: Lab) -> tuple[SerfAgent, SerfAgent]:
    s1 = lab.serf("s1", tags={"role": "serf"})
    s2 = lab.serf("s2", join=[s1.bind])
    wait_for(lambda: _alive_everywhere([s1, s2], {"s1", "s2"}), timeout=JOIN_S, what="serf pair joined")
    return s1, s2


def _meshnet_in(lab: Lab, s1: SerfAgent, s2: SerfAgent, **kw: object) -> MeshnetAgent:
    m1 = lab.meshnet("m1", join=[s1.bind], **kw)
    everyone = [s1, s2, m1]
    wait_for(
        lambda: _alive_everywhere(everyone, {"s1", "s2", "m1"}),
        timeout=JOIN_S,
        what="s1, s2 and m1 alive in every member's view",
        describe=lambda: _views(everyone),
    )
    return m1


def test_a_meshnet_joins_serf_and_is_alive_with_tags(lab: Lab) -> None:
    s1, s2 = _serf_pair(lab)
    m1 = _meshnet_in(lab, s1, s2, tags={"role": "web", "dc": "lab"})
    for serf in (s1, s2):
        member = serf.members()["m1"]
        assert member.status == "alive"
        assert member.tags == {"role": "web", "dc": "lab"}, f"{serf.name} sees m1 tags {member.tags}"
        assert member.addr == fmt_addr(m1.bind)


def test_b_killed_meshnet_agent_is_failed_in_serf(lab: Lab) -> None:
    s1, s2 = _serf_pair(lab)
    m1 = _meshnet_in(lab, s1, s2)
    m1.proc.kill()
    for serf in (s1, s2):
        wait_for(
            lambda serf=serf: serf.status_of("m1") == "failed",
            timeout=DETECT_S,
            what=f"m1 failed in {serf.name} after SIGKILL",
            describe=lambda: _views([s1, s2]),
        )


def test_c_meshnet_sigterm_leaves_gracefully_and_is_left_in_serf(lab: Lab) -> None:
    s1, s2 = _serf_pair(lab)
    m1 = _meshnet_in(lab, s1, s2)
    m1.proc.send(signal.SIGTERM)
    for serf in (s1, s2):
        wait_for(
            lambda serf=serf: serf.status_of("m1") == "left",
            timeout=LEAVE_S,
            what=f"m1 left in {serf.name} after SIGTERM",
            describe=lambda: _views([s1, s2]),
        )
    rc = m1.proc.wait(15)
    assert rc == 0, f"meshnet-agent after SIGTERM: exit code {rc} (None = still running)"


def test_d_killed_serf_agent_is_failed_in_meshnet(lab: Lab) -> None:
    s1, s2 = _serf_pair(lab)
    m1 = _meshnet_in(lab, s1, s2)
    s2.proc.kill()
    wait_for(
        lambda: m1.status_of("s2") == "failed",
        timeout=DETECT_S,
        what="s2 failed in meshnet m1 after SIGKILL",
        describe=lambda: _views([m1, s1]),
    )
    assert m1.status_of("s1") == "alive"


def test_e_serf_joins_meshnet_cluster_and_all_see_all_alive(lab: Lab) -> None:
    m1 = lab.meshnet("m1", tags={"role": "seed"})
    m2 = lab.meshnet("m2", join=[m1.bind])
    wait_for(
        lambda: _alive_everywhere([m1, m2], {"m1", "m2"}),
        timeout=JOIN_S,
        what="meshnet pair joined",
        describe=lambda: _views([m1, m2]),
    )
    s1 = lab.serf("s1", join=[m1.bind])
    everyone = [m1, m2, s1]
    wait_for(
        lambda: _alive_everywhere(everyone, {"m1", "m2", "s1"}),
        timeout=JOIN_S,
        what="m1, m2 and s1 alive in every member's view",
        describe=lambda: _views(everyone),
    )
    assert s1.members()["m1"].tags == {"role": "seed"}


@pytest.mark.parametrize("lab", ["encrypted"], indirect=True)
@pytest.mark.parametrize("meshnet_key", ["wrong-key", "no-key"])
def test_encryption_is_enforced_a_meshnet_agent_without_the_key_never_joins(
    lab: Lab, meshnet_key: str
) -> None:
    """The negative control for the encrypted cases: they would pass on plaintext by accident otherwise.

    A meshnet agent with the cluster's key joins first (the positive control: the same command line
    works), then one with another key or none must never be listed.
    """
    s1 = lab.serf("s1")
    lab.meshnet("insider", join=[s1.bind])
    wait_for(
        lambda: s1.status_of("insider") == "alive", timeout=JOIN_S, what="insider (right key) alive in serf"
    )
    keyring = lab.other_keyring() if meshnet_key == "wrong-key" else None
    bind = lab.pool.take()
    argv = meshnet_command(
        "intruder", bind, api=lab.workdir / "intruder.sock", join=[s1.bind], keyring_file=keyring
    )
    intruder = lab.procs.spawn("intruder", argv)
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        assert "intruder" not in s1.members(), f"serf with key K accepted a meshnet agent with {meshnet_key}"
        time.sleep(0.3)
    if intruder.running():
        intruder.kill()
