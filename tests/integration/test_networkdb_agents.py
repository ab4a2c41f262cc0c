"""NetworkDB across five real ``meshnet-agent`` processes on loopback (``--dataplane none --profile local``).

- entries written on one agent are visible on all (through ``meshnetctl db`` and the API);
- a frozen agent's (SIGSTOP) entries disappear from readers once it is declared failed (still readable
  with ``?hidden=true``) and come back when it resumes (SIGCONT);
- a SIGKILLed agent restarted with the same name and state directory re-asserts the entries it owns (at
  higher ltimes); one restarted with an empty state directory has them deleted cluster-wide.

Every process is started here, remembered by PID and stopped by that PID in the fixture's teardown, also
on failure (SIGCONT first for a stopped one); children die with pytest (PR_SET_PDEATHSIG). The work
directory (sockets, logs, state directories) is removed at teardown. Waits poll with bounded deadlines
derived from the local profile: failure detection takes a few probe intervals (1 s) times the suspicion
multiplier (3), so 30 s bounds it with room for a loaded machine.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.integration import agent_pool
from tests.integration.agent_pool import Pool, wait_until

DETECT_TIMEOUT = 30.0
SPREAD_TIMEOUT = 20.0

pytestmark = pytest.mark.hang_guard(240)


class Agent(agent_pool.Agent):
    def call(self, method: str, target: str, body=None, timeout: float = 10.0):
        return super().call(method, target, body, timeout)

    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return super().ctl(*args, timeout=timeout)

    def entry(self, net: str, table: str, key: str, *, hidden: bool = False):
        return self.get(f"/v1/db/{net}/{table}/{key}" + ("?hidden=true" if hidden else ""))


pool = agent_pool.pool_fixture("meshnet-ndb-it-", Agent)


def start_five(pool: Pool, base: str) -> list[Agent]:
    """Five agents on BASE.1..5, all joined to network ``ov``; each has written one entry in ``ov``
    and one in the global network, and every agent sees all ten."""
    first = pool.start("n1", f"{base}.1")
    agents = [first] + [pool.start(f"n{i}", f"{base}.{i}", join=first) for i in range(2, 6)]
    names = {a.name for a in agents}

    def all_alive() -> bool:
        for a in agents:
            body = a.get("/v1/members")
            if body is None or {m["name"] for m in body["members"] if m["state"] == "alive"} != names:
                return False
        return True

    wait_until(all_alive, SPREAD_TIMEOUT, "all five alive everywhere", pool.describe)
    for a in agents:
        out = a.ctl("db", "join", "ov")
        assert out.returncode == 0, out.stderr
    wait_until(
        lambda: all(len((a.get("/v1/db/ov/peers") or {"peers": []})["peers"]) == 4 for a in agents),
        SPREAD_TIMEOUT,
        "every agent to see four peers in ov",
        pool.describe,
    )
    for a in agents:
        out = a.ctl("db", "put", "ov", "endpoints", f"ep-{a.name}", f"10.0.0.{a.name[1:]}")
        assert out.returncode == 0, out.stderr
        a.call("PUT", f"/v1/db/-/services/svc-{a.name}", {"value": f"vip-{a.name}"})
    wait_until(
        lambda: all(sees_all(a, agents) for a in agents),
        SPREAD_TIMEOUT,
        "all ten entries everywhere",
        pool.describe,
    )
    return agents


def keys(agent: Agent, net: str, table: str, query: str = "") -> dict[str, dict]:
    body = agent.get(f"/v1/db/{net}/{table}{query}")
    return {} if body is None else {e["key"]: e for e in body["entries"]}


def sees_all(reader: Agent, writers: list[Agent]) -> bool:
    eps = keys(reader, "ov", "endpoints")
    svcs = keys(reader, "-", "services")
    return all(f"ep-{w.name}" in eps and f"svc-{w.name}" in svcs for w in writers)


def test_entries_spread_to_all_and_a_frozen_agents_entries_hide_and_return(pool: Pool):
    agents = start_five(pool, "127.0.9")
    n1, n2 = agents[0], agents[1]
    # What a reader sees through the CLI: owner, value, ltime, not deleted.
    out = agents[4].ctl("db", "ls", "ov", "endpoints", "--json")
    rows = {e["key"]: e for e in json.loads(out.stdout)["entries"]}
    assert (
        rows["ep-n1"]["owner"] == "n1"
        and rows["ep-n1"]["value"] == "10.0.0.1"
        and not rows["ep-n1"]["deleted"]
    )
    assert set(rows) == {f"ep-n{i}" for i in range(1, 6)}
    table = agents[3].ctl("db", "ls", "-", "services").stdout.splitlines()
    assert table[0].split() == ["KEY", "VALUE", "OWNER", "LTIME", "DELETED", "HIDDEN"]
    assert any(line.split()[:3] == ["svc-n2", "vip-n2", "n2"] for line in table[1:])

    readers = [a for a in agents if a is not n2]
    n2.proc.send_signal(signal.SIGSTOP)
    n2.stopped = True
    wait_until(
        lambda: all(
            "ep-n2" not in keys(r, "ov", "endpoints") and "svc-n2" not in keys(r, "-", "services")
            for r in readers
        ),
        DETECT_TIMEOUT,
        "n2's entries to disappear from every reader once n2 is declared failed",
        pool.describe,
    )
    # Hidden, not deleted: still readable explicitly, and the others' entries are untouched.
    hidden = n1.entry("ov", "endpoints", "ep-n2", hidden=True)
    assert hidden is not None and hidden["hidden"] is True and hidden["deleted"] is False
    assert all(sees_all(r, readers) for r in readers)

    n2.proc.send_signal(signal.SIGCONT)
    n2.stopped = False
    wait_until(
        lambda: all(sees_all(r, agents) for r in agents),
        DETECT_TIMEOUT,
        "n2's entries back at every reader after SIGCONT",
        pool.describe,
    )
    assert n1.entry("ov", "endpoints", "ep-n2")["hidden"] is False


def test_a_killed_agent_restarted_with_its_state_dir_reasserts_its_entries(pool: Pool):
    agents = start_five(pool, "127.0.10")
    n3 = agents[2]
    readers = [a for a in agents if a is not n3]
    old = n3.entry("ov", "endpoints", "ep-n3")
    n3.proc.send_signal(signal.SIGKILL)
    n3.proc.wait(timeout=10)
    wait_until(
        lambda: all("ep-n3" not in keys(r, "ov", "endpoints") for r in readers),
        DETECT_TIMEOUT,
        "n3's entries hidden at the readers",
        pool.describe,
    )
    again = pool.start("n3", n3.ip, port=n3.port, join=agents[0], state=n3.state)

    def reasserted() -> bool:
        for r in [*readers, again]:
            ep = r.entry("ov", "endpoints", "ep-n3")
            svc = r.entry("-", "services", "svc-n3")
            if ep is None or svc is None or ep["ltime"] <= old["ltime"] or ep["owner"] != "n3":
                return False
        return True

    wait_until(
        reasserted, DETECT_TIMEOUT, "n3's entries re-asserted (higher ltime) everywhere", pool.describe
    )
    assert again.entry("ov", "endpoints", "ep-n3")["value"] == "10.0.0.3"
    stats = again.get("/v1/db/stats")
    # the test's two entries, plus whatever the agent's own services (IPAM) keep in NetworkDB
    assert stats["agent"]["restored_entries"] >= 2 and stats["agent"]["restored_networks"] >= 1


def test_a_killed_agent_restarted_with_an_empty_state_dir_has_its_entries_deleted(pool: Pool):
    agents = start_five(pool, "127.0.11")
    n4 = agents[3]
    readers = [a for a in agents if a is not n4]
    n4.proc.send_signal(signal.SIGKILL)
    n4.proc.wait(timeout=10)
    wait_until(
        lambda: all("svc-n4" not in keys(r, "-", "services") for r in readers),
        DETECT_TIMEOUT,
        "n4's entries hidden at the readers",
        pool.describe,
    )
    assert all(r.entry("-", "services", "svc-n4", hidden=True) is not None for r in readers)
    fresh = pool.workdir / "n4.empty.state"
    again = pool.start("n4", n4.ip, port=n4.port, join=agents[0], state=fresh)

    def deleted_everywhere() -> bool:
        for r in [*readers, again]:
            tomb = keys(r, "-", "services", "?deleted=true&hidden=true").get("svc-n4")
            if tomb is None or not tomb["deleted"] or tomb["owner"] != "n4":
                return False
            if r is not again and r.entry("ov", "endpoints", "ep-n4", hidden=True) is not None:
                return False
        return True

    wait_until(deleted_everywhere, DETECT_TIMEOUT, "n4's old entries deleted cluster-wide", pool.describe)
    # The other agents' entries are untouched.
    assert all(sees_all(r, [a for a in agents if a is not n4]) for r in readers)
