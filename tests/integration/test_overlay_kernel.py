"""The VXLAN overlay in the kernel: real agents (``--dataplane kernel``) in network namespaces (``sim.netns``).

One three-host cluster for the module (prefix ``ovk-``, its own underlay, so a running demo is never
touched); containers are sandboxes the agents create through their API. Checked: TCP and ICMP between
containers on two hosts, carried as VXLAN (UDP 4789) on the underlay; two networks isolated, also with
one subnet; a removed container's entries gone from every other host; FDB and neighbour entries deleted
by hand come back within one slow-timer period; a SIGKILLed and restarted agent leaves an open TCP
connection working and reconciles; vxlan0's ``local`` is the host's data address, so VXLAN leaves from it
on a multi-homed host whose routing prefers another source.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshnet.ctl import AgentError
from sim.netns.harness import Harness, agent_binary
from tests.conftest import require_tool

pytestmark = [pytest.mark.root, pytest.mark.hang_guard(400)]

#: The agents' slow reconcile timer (CnmService.reconcile_interval): drift is repaired within one period.
RECONCILE_INTERVAL = 10.0
#: NetworkDB spreads an entry in well under a second on the local profile; generous for a loaded machine.
SPREAD = 20.0
PREFIX = "ovk-"

_ECHO_SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
def serve(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

#: One connection kept open: a line every 0.1 s, each echo awaited (2 s); counts echoes into a file.
_KEEPALIVE_CLIENT = """
import socket, sys, time
out = open(sys.argv[3], "w", buffering=1)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(2.0)
n = 0
try:
    while True:
        c.sendall(b"x" * 64 + b"\\n")
        got = b""
        while len(got) < 65:
            chunk = c.recv(65 - len(got))
            if not chunk:
                raise ConnectionError("closed by the server")
            got += chunk
        n += 1
        out.write(f"{n}\\n")
        time.sleep(0.1)
except Exception as exc:
    out.write(f"ERROR {type(exc).__name__}: {exc}\\n")
"""


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    require_tool("ping", "ICMP between containers")
    require_tool("tcpdump", "VXLAN on the underlay")
    run = tmp_path_factory.mktemp("ovk")
    h = Harness(prefix=PREFIX, run_dir=run, dataplane="kernel", die_with_parent=True)
    try:
        h.down()  # what a crashed earlier run of this module left
        h.up(3)
        yield h
    finally:
        for host in ("h1", "h2", "h3"):
            with_log = h.log_tail(host, 40) if (run / f"{host}.log").exists() else ""
            if with_log:
                print(f"--- {host} log ---\n{with_log}", file=sys.stderr)
        h.down()


def known(h: Harness, host: str, target: str) -> bool:
    try:
        h.call(host, "GET", target)
    except AgentError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def vni(h: Harness, network: str) -> int:
    return int(h.call("h1", "GET", f"/v1/networks/{network}")["vni"])


def overlay_ns(host: str, network_vni: int) -> str:
    return f"{PREFIX}{host}-ov-{network_vni}"


def fdb(netns: str) -> set[tuple[str, str]]:
    """(MAC, VTEP) of the permanent FDB entries on vxlan0 in ``netns`` (empty if it does not exist)."""
    out = sh("bridge", "-n", netns, "fdb", "show", "dev", "vxlan0", check=False).stdout
    entries = set()
    for line in out.splitlines():
        parts = line.split()
        if "dst" in parts and "permanent" in parts:
            entries.add((parts[0], parts[parts.index("dst") + 1]))
    return entries


def neighbours(netns: str) -> set[tuple[str, str]]:
    out = sh("ip", "-n", netns, "neigh", "show", "dev", "vxlan0", check=False).stdout
    return {
        (p[0], p[p.index("lladdr") + 1]) for p in (line.split() for line in out.splitlines()) if "lladdr" in p
    }


def ensure_c1_c2(h: Harness) -> None:
    """c1 (h1) and c2 (h2) on n1 (10.31.0.0/24), as the first test makes them (each test may run alone)."""
    containers = h.state().get("containers", {})
    if "c1" not in containers:
        h.container("c1", host="h1", network="n1", subnet="10.31.0.0/24", ip="10.31.0.11")
    if "c2" not in containers:
        h.container("c2", host="h2", network="n1")


def ping(h: Harness, src: str, ip: str, count: int = 1) -> bool:
    return h.exec(src, ["ping", "-c", str(count), "-W", "1", ip], timeout=30).returncode == 0


def test_tcp_and_icmp_between_hosts_ride_vxlan_on_the_underlay(cluster: Harness, tmp_path: Path):
    h = cluster
    c1 = h.container("c1", host="h1", network="n1", subnet="10.31.0.0/24", ip="10.31.0.11")
    c2 = h.container("c2", host="h2", network="n1")
    assert c1["ip"] == "10.31.0.11" and c2["ip"].startswith("10.31.0.")
    wait_until(lambda: ping(h, "c1", c2["ip"]), SPREAD, "c1 to ping c2 over the overlay")
    # h1 programmed c2's address on its existing vxlan0 while c1 was plugged: it kicked c1 (a permanent entry
    # written and deleted in c1's namespace through the kernel dataplane), which leaves no permanent entry.
    cnm = h.call("h1", "GET", "/v1/agent")["services"]["cnm"]
    assert cnm["arp_kicks"] >= 1 and cnm["arp_kick_errors"] == 0, cnm
    assert "PERMANENT" not in h.exec("c1", ["ip", "neigh", "show"]).stdout
    # The underlay carries it as VXLAN: tcpdump in the underlay namespace sees UDP 4789 between h1 and h2.
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            h.underlay,
            "tcpdump",
            "-l",
            "-n",
            "-i",
            "br-under",
            "-c",
            "4",
            "udp port 4789",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # tcpdump attaches
        assert ping(h, "c1", c2["ip"], count=3)
        out, _ = dump.communicate(timeout=15)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    lines = [line for line in out.splitlines() if "4789" in line]
    assert len(lines) >= 4, out
    assert any("10.77.0.11" in line and "10.77.0.12" in line for line in lines), out
    # TCP: an echo server in c2, one exchange from c1.
    server = subprocess.Popen(h.exec_argv("c2", [sys.executable, "-c", _ECHO_SERVER, "7000"]))
    try:
        probe = "import socket,sys; c=socket.create_connection((sys.argv[1],7000),timeout=5); c.sendall(b'hi'); print(c.recv(2).decode())"
        wait_until(
            lambda: h.exec("c1", [sys.executable, "-c", probe, c2["ip"]]).stdout.strip() == "hi",
            SPREAD,
            "a TCP echo from c2",
        )
    finally:
        server.kill()
        server.wait()
    # h3 has no container on n1: no overlay namespace there.
    assert f"{PREFIX}h3-ov-{vni(h, 'n1')}" not in os.listdir("/run/netns")


def vxlan_local(netns: str) -> str | None:
    """The ``local`` of vxlan0 in ``netns`` (``ip -d link show``), None when it has none."""
    parts = sh("ip", "-n", netns, "-d", "link", "show", "vxlan0").stdout.split()
    return parts[parts.index("local") + 1] if "local" in parts else None


def vxlan_sources(h: Harness, action: Callable[[], object]) -> set[str]:
    """Source addresses of the VXLAN packets tcpdump sees on the underlay bridge while ``action`` runs."""
    argv = ["ip", "netns", "exec", h.underlay, "tcpdump", "-l", "-n", "-i", "br-under", "-c", "4"]
    dump = subprocess.Popen(
        [*argv, "udp port 4789"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.0)  # tcpdump attaches
        action()
        out, _ = dump.communicate(timeout=15)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    # "IP 10.77.0.11.41234 > 10.77.0.12.4789: VXLAN ..."
    return set(re.findall(r"IP (\d+\.\d+\.\d+\.\d+)\.\d+ > ", out))


def test_vxlan_leaves_from_the_data_address_on_a_multi_homed_host(cluster: Harness):
    h = cluster
    ensure_c1_c2(h)
    c2 = h.container_record("c2")
    n1 = vni(h, "n1")
    assert vxlan_local(overlay_ns("h1", n1)) == "10.77.0.11"
    assert vxlan_local(overlay_ns("h2", n1)) == "10.77.0.12"
    wait_until(lambda: ping(h, "c1", c2["ip"]), SPREAD, "c1 to ping c2")
    # h1 gets a second underlay address that routing prefers as the source: without local, VXLAN
    # would leave h1 as 10.77.0.111; with it, it still leaves from the data address 10.77.0.11.
    ns = h.host_netns("h1")
    sh("ip", "-n", ns, "addr", "add", "10.77.0.111/24", "dev", "eth0")
    try:
        sh("ip", "-n", ns, "route", "replace", "10.77.0.0/24", "dev", "eth0", "src", "10.77.0.111")
        route = sh("ip", "-n", ns, "route", "get", "10.77.0.12").stdout
        assert "src 10.77.0.111" in route, route
        sources = vxlan_sources(h, lambda: ping(h, "c1", c2["ip"], count=3))
        assert "10.77.0.11" in sources and "10.77.0.111" not in sources, sources
        assert ping(h, "c1", c2["ip"])
    finally:
        sh(
            "ip",
            "-n",
            ns,
            "route",
            "replace",
            "10.77.0.0/24",
            "dev",
            "eth0",
            "proto",
            "kernel",
            "scope",
            "link",
            "src",
            "10.77.0.11",
        )
        sh("ip", "-n", ns, "addr", "del", "10.77.0.111/24", "dev", "eth0", check=False)


def test_two_networks_are_isolated_even_with_the_same_subnet(cluster: Harness):
    h = cluster
    ensure_c1_c2(h)
    c2 = h.container_record("c2")
    h.container("c3", host="h1", network="n2", subnet="10.31.0.0/24", ip="10.31.0.11")  # c1's address
    # One address of n2 held on h2 first, so that c4 (next on h2) does not get c2's address in n1.
    wait_until(lambda: known(h, "h2", "/v1/networks/n2"), SPREAD, "network n2 to reach h2")
    h.call("h2", "POST", "/v1/endpoints", {"network": "n2", "name": "pad"})
    c4 = h.container("c4", host="h2", network="n2")
    assert vni(h, "n1") != vni(h, "n2")
    assert c4["ip"] not in (c2["ip"], "10.31.0.11"), (c2, c4)
    wait_until(lambda: ping(h, "c3", c4["ip"]), SPREAD, "c3 to ping c4 on n2")
    assert ping(h, "c1", c2["ip"])  # n1 still works beside it, from the same address
    assert not ping(h, "c3", c2["ip"])  # c2 is on n1
    assert not ping(h, "c1", c4["ip"])  # c4 is on n2
    assert not ping(h, "c2", c4["ip"])


def test_a_removed_container_leaves_no_entries_on_other_hosts(cluster: Harness):
    h = cluster
    ensure_c1_c2(h)
    c5 = h.container("c5", host="h3", network="n1")
    mac, ip5 = c5["endpoint"]["mac"], c5["ip"]
    n1 = vni(h, "n1")
    entry = (mac, "10.77.0.13")
    wait_until(lambda: entry in fdb(overlay_ns("h1", n1)), SPREAD, "h1's FDB entry for c5")
    if f"{PREFIX}h2-ov-{n1}" in os.listdir("/run/netns"):
        wait_until(lambda: entry in fdb(overlay_ns("h2", n1)), SPREAD, "h2's FDB entry for c5")
    assert (ip5, mac) in neighbours(overlay_ns("h1", n1))
    h.remove_container("c5")
    for host in ("h1", "h2"):
        ns = overlay_ns(host, n1)
        wait_until(lambda ns=ns: entry not in fdb(ns), SPREAD, f"{host}'s FDB entry for c5 to go")
        assert not any(ip == ip5 for ip, _ in neighbours(ns))
    assert not any(ns.startswith(f"{PREFIX}h3-") for ns in os.listdir("/run/netns"))  # h3 holds nothing now


def test_entries_deleted_by_hand_come_back_within_one_reconcile_period(cluster: Harness):
    h = cluster
    ensure_c1_c2(h)
    c2 = h.container_record("c2")
    mac = c2["endpoint"]["mac"]
    ns = overlay_ns("h1", vni(h, "n1"))
    wait_until(lambda: (mac, "10.77.0.12") in fdb(ns), SPREAD, "h1's FDB entry for c2")
    sh("bridge", "-n", ns, "fdb", "del", mac, "dev", "vxlan0", "self")
    sh("ip", "-n", ns, "neigh", "del", c2["ip"], "dev", "vxlan0")
    assert (mac, "10.77.0.12") not in fdb(ns) and (c2["ip"], mac) not in neighbours(ns)
    wait_until(
        lambda: (mac, "10.77.0.12") in fdb(ns) and (c2["ip"], mac) in neighbours(ns),
        RECONCILE_INTERVAL + 5.0,
        "the deleted FDB and neighbour entries to come back",
    )
    assert ping(h, "c1", c2["ip"])


def _link_ids(netns: str) -> str:
    return sh("ip", "-n", netns, "-o", "link", "show").stdout


def test_sigkill_and_restart_of_an_agent_keeps_a_tcp_connection_and_reconciles(
    cluster: Harness, tmp_path: Path
):
    h = cluster
    ensure_c1_c2(h)
    c2 = h.container_record("c2")
    n1 = vni(h, "n1")
    counts = tmp_path / "echoes"
    server = subprocess.Popen(h.exec_argv("c2", [sys.executable, "-c", _ECHO_SERVER, "7001"]))
    client = None
    try:
        time.sleep(0.5)
        client = subprocess.Popen(
            h.exec_argv("c1", [sys.executable, "-c", _KEEPALIVE_CLIENT, c2["ip"], "7001", str(counts)])
        )

        def echoes() -> int:
            lines = counts.read_text().splitlines() if counts.exists() else []
            assert not any(line.startswith("ERROR") for line in lines), lines[-1]
            return int(lines[-1]) if lines else 0

        wait_until(lambda: echoes() >= 5, SPREAD, "the connection to carry echoes")
        before = {host: _link_ids(overlay_ns(host, n1)) for host in ("h1", "h2")}
        sandboxes = h.call("h2", "GET", "/v1/sandboxes")["sandboxes"]
        assert "c2" in {s["name"] for s in sandboxes}
        host = h.state()["hosts"]["h2"]
        os.kill(host["pid"], signal.SIGKILL)
        wait_until(
            lambda: not os.path.exists(f"/proc/{host['pid']}/stat") or _zombie(host["pid"]),
            10,
            "h2's agent gone",
        )
        at_kill = echoes()
        time.sleep(2.0)  # the connection keeps working with h2's agent down
        assert echoes() > at_kill
        h._start_agent(agent_binary(), 2, "kernel")
        h._wait_api("h2")
        h.wait_converged()
        at_restart = echoes()
        time.sleep(3.0)
        assert echoes() > at_restart + 10  # still flowing after the restart, never an error
        # State reconciled and adopted in place: the same links (same indexes and MACs) on both hosts.
        assert _link_ids(overlay_ns("h2", n1)) == before["h2"]
        assert _link_ids(overlay_ns("h1", n1)) == before["h1"]
        assert h.call("h2", "GET", "/v1/sandboxes")["sandboxes"] == sandboxes  # adopted from sandboxes.json
        # The restarted agent still reconciles: a new container on h1 gets its entries on h2.
        c6 = h.container("c6", host="h1", network="n1", ip="10.31.0.16")
        mac6 = c6["endpoint"]["mac"]
        wait_until(lambda: (mac6, "10.77.0.11") in fdb(overlay_ns("h2", n1)), SPREAD, "h2 to program c6")
        assert ping(h, "c2", c6["ip"])
        assert echoes() > at_restart + 10
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"
