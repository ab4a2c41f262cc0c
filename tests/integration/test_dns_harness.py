"""The embedded DNS with real agents in the netns harness (``sim.netns``): dig and getent in containers.

Two hosts (prefix ``dnsh-``, own underlay and run directory); the agents run ``--dataplane kernel`` with
a config file whose ``[dns]`` table points their upstream at 127.0.0.53, where a dnsmasq runs in each
host's namespace: an upstream on the *host's* loopback, reachable only because the resolver sends from
the agent's namespace, not the container's (libnetwork.md section 9 #17). Containers are sandboxes the
agents create through ``POST /v1/attach``.

Checked from a container on h2: a container on h1 by name, alias and ``NAME.NETWORK`` with ``dig`` and
``getent hosts``; PTR; a container on another network is NXDOMAIN; a service made with ``meshnetctl
service create`` on h1 with tasks on both hosts answers all tasks, ``tasks.NAME`` and SRV; an external
name is answered by the host's dnsmasq; a removed container becomes NXDOMAIN.

Bounds: NetworkDB spreads an entry in well under a second on the local profile; waits allow SPREAD.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sim.netns.harness import Harness
from tests.conftest import require_tool

pytestmark = [pytest.mark.root, pytest.mark.hang_guard(300)]

PREFIX = "dnsh-"
SPREAD = 20.0


def _until(pred: Callable[[], object], what: str, timeout: float = SPREAD) -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Harness]:
    require_tool("dig", "the DNS client in the containers")
    dnsmasq = require_tool("dnsmasq", "the hosts' upstream resolver")
    tmp = tmp_path_factory.mktemp("dnsh")
    config = tmp / "agent.toml"
    config.write_text('[dns]\nupstreams = ["127.0.0.53"]\n')
    h = Harness(
        prefix=PREFIX, run_dir=tmp / "run", die_with_parent=True, extra_args=["--config", str(config)]
    )
    procs: list[subprocess.Popen] = []
    try:
        h.up(2)
        for host in ("h1", "h2"):
            argv = [
                dnsmasq,
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.53",
                "--pid-file=",
                "--user=root",
                "--host-record=ext.example.test,192.0.2.7",
            ]
            procs.append(subprocess.Popen(h.exec_argv(host, argv), stderr=subprocess.PIPE))
        h.container("c1", host=1, network="front", aliases=["web"])
        h.container("c2", host=2, network="front")
        h.container("c3", host=1, network="back")
        yield h
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        h.down()


def dig(h: Harness, container: str, *args: str) -> tuple[str, list[str]]:
    res = h.exec(
        container, ["dig", "@127.0.0.11", "+time=2", "+tries=1", "+noall", "+comments", "+answer", *args]
    )
    status = "TIMEOUT"
    answers = []
    for line in res.stdout.splitlines():
        if "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
        elif line and not line.startswith(";"):
            parts = line.split()
            answers.append(" ".join([parts[0].rstrip(".").lower(), parts[3], " ".join(parts[4:])]))
    return status, sorted(answers)


def test_names_services_forwarding_and_removal_across_hosts(cluster: Harness):
    h = cluster
    ip1 = h.container_record("c1")["ip"]
    ip2 = h.container_record("c2")["ip"]
    _until(lambda: dig(h, "c2", "c1")[0] == "NOERROR", "c1's name on h2")
    assert dig(h, "c2", "c1") == ("NOERROR", [f"c1 A {ip1}"])
    assert dig(h, "c2", "web") == ("NOERROR", [f"web A {ip1}"])
    assert dig(h, "c2", "c1.front") == ("NOERROR", [f"c1.front A {ip1}"])
    rev = ".".join(reversed(ip1.split("."))) + ".in-addr.arpa"
    assert dig(h, "c2", "-x", ip1) == ("NOERROR", [f"{rev} PTR c1.front."])
    res = h.exec("c2", ["getent", "hosts", "web"])
    assert res.returncode == 0 and res.stdout.split()[0] == ip1, res
    res = h.exec("c2", ["getent", "hosts", "c1.front"])
    assert res.returncode == 0 and res.stdout.split()[0] == ip1, res
    # c3 is on network back, which c2 is not attached to
    assert dig(h, "c2", "c3")[0] == "NXDOMAIN"
    assert dig(h, "c2", "c3.back")[0] == "NXDOMAIN"
    # external names: the host's dnsmasq on the host's loopback (never reachable from the container itself)
    assert dig(h, "c2", "ext.example.test") == ("NOERROR", ["ext.example.test A 192.0.2.7"])

    # a service with a task on each host, made with the CLI on h1
    ctl = [str(Path(sys.executable).parent / "meshnetctl"), "--api", h.api("h1")]
    res = subprocess.run(
        [
            *ctl,
            "service",
            "create",
            "api",
            "--network",
            "front",
            "--endpoint",
            "c1",
            "--endpoint",
            "c2",
            "--port",
            "http:80/tcp",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res
    want = sorted([f"api A {ip1}", f"api A {ip2}"])
    _until(lambda: dig(h, "c2", "api")[1] == want, "both tasks of api on h2")
    _until(lambda: dig(h, "c1", "api")[1] == want, "both tasks of api on h1")  # h2's task travels to h1
    assert dig(h, "c2", "tasks.api")[1] == sorted([f"tasks.api A {ip1}", f"tasks.api A {ip2}"])
    assert dig(h, "c2", "_http._tcp.api", "SRV")[1] == [
        "_http._tcp.api SRV 0 0 80 c1.front.",
        "_http._tcp.api SRV 0 0 80 c2.front.",
    ]
    res = subprocess.run([*ctl, "service", "rm", "api"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res
    _until(lambda: dig(h, "c2", "api")[0] == "NXDOMAIN", "api gone on h2")

    # a removed container becomes NXDOMAIN on the other host
    h.remove_container("c1")
    _until(lambda: dig(h, "c2", "c1")[0] == "NXDOMAIN", "c1 gone on h2")
    assert dig(h, "c2", "web")[0] == "NXDOMAIN"
