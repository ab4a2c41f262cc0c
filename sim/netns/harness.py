"""A cluster of real ``meshnet-agent`` processes, one per network namespace ("host"), on a private underlay.

Theory of operation (docs/agent-services.md section 6 is the contract):

- ``up``: an underlay namespace ``{prefix}mnu`` holding the bridge ``br-under``; host namespaces
  ``{prefix}h1``.. each with ``eth0`` (address ``10.77.0.{10+i}/24``, the VTEP and gossip address) whose veth
  peer ``u-hI`` is created *inside* the underlay namespace and enslaved to the bridge, ``lo`` up. The pair is
  created in the underlay namespace with its peer moved straight into the host namespace, so no link, address,
  route or firewall rule ever exists in the root namespace. One agent per host, started as
  ``nsenter --net=/run/netns/{prefix}hI meshnet-agent run ...`` (nsenter execs, so the PID we record is the
  agent's; unlike ``ip netns exec`` it keeps the machine's mount namespace, so the namespaces the agent
  creates are visible to everyone), logging to ``RUN/hI.log``, API on ``RUN/hI.sock``, state in
  ``RUN/hI.state``.
- Bookkeeping is ``RUN/harness.json``, rewritten atomically after every step (namespace created, agent
  started with its PID and kernel start time, network created, container attached), under ``RUN/harness.lock``
  so concurrent command-line calls do not lose each other's records. A crash at any point leaves a file that
  lists at most what exists.
- ``container`` creates the network through the host's API on first use (``POST /v1/networks``), waits until
  the host sees it (a network created on another host arrives by NetworkDB), then ``POST /v1/attach``: the
  agent creates the sandbox namespace ``{prefix}hI-sb-NAME``. ``exec`` is ``ip netns exec`` into it.
- ``down`` stops the recorded agents by PID (checked against the recorded start time, so a reused PID is never
  signalled; SIGTERM twice, the second stops an agent at once, and SIGKILL after a grace period), and every
  process still inside one of the harness's namespaces (``ip netns pids``: agents of a run whose bookkeeping
  is lost, commands left by ``exec``); then it deletes every namespace the file lists *and* every namespace matching ``{prefix}mnu``,
  ``{prefix}h<N>`` or ``{prefix}h<N>-*`` (what a crashed run or the agents left), ``/etc/netns/<those>``, and
  the harness's files in ``RUN``. It works with or without ``harness.json``.

A ``Harness`` with another ``prefix`` and ``run_dir`` is a wholly separate cluster (its own underlay, so the
same 10.77.0.x addresses do not collide); tests use one so they never disturb a running demo. Nothing here
imports trio or ``meshnet.runtime``: processes via ``subprocess``, the agents via ``meshnet.ctl.call``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from meshnet import ctl

__all__ = [
    "Harness",
    "HarnessError",
    "DEFAULT_RUN_DIR",
    "UNDERLAY",
    "BRIDGE",
    "GOSSIP_PORT",
    "host_addr",
    "agent_binary",
]

DEFAULT_RUN_DIR = Path("/run/meshnet-netns")
UNDERLAY = "mnu"
BRIDGE = "br-under"
GOSSIP_PORT = 7946
UNDERLAY_PREFIX_LEN = 24
MAX_HOSTS = 200
STATE_FILE = "harness.json"
LOCK_FILE = "harness.lock"
#: ``down`` removes the whole cluster, so a graceful leave buys nothing (and with every agent leaving at
#: once the IPAM service waits its leave_wait, 30 s, for heirs that are leaving too): SIGTERM, then after
#: LEAVE_GRACE a second SIGTERM (the agent then stops at once, closing its sockets and state), then
#: SIGKILL for whatever still runs after STOP_WAIT.
LEAVE_GRACE = 0.5
STOP_WAIT = 5.0
KILL_WAIT = 5.0
#: An agent's API answers within about a second of its start on an idle machine; 8 engineers share 2 cores.
API_TIMEOUT = 30.0
#: Join convergence with the local profile is a few gossip intervals; bounded generously for a loaded host.
CONVERGE_TIMEOUT = 60.0
#: A network created on one host reaches another by NetworkDB gossip (sub-second on the local profile).
NETWORK_SPREAD_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,11}$")


class HarnessError(Exception):
    """A harness operation failed; the message says what and, when it helps, what to do."""


def host_addr(index: int) -> str:
    """Underlay (VTEP and gossip) address of host ``index`` (1-based): ``10.77.0.{10+index}``."""
    return f"10.77.0.{10 + index}"


def agent_binary() -> str:
    """The ``meshnet-agent`` of the running interpreter's environment (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "meshnet-agent"
    if beside.exists():
        return str(beside)
    found = shutil.which("meshnet-agent")
    if found is None:
        raise HarnessError("meshnet-agent not found; run scripts/bootstrap (pip install -e .) first")
    return found


def _die_with_parent() -> None:  # in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip_batch(netns: str, lines: Sequence[str]) -> None:
    _run(["ip", "-n", netns, "-batch", "-"], input="".join(f"{line}\n" for line in lines))


def list_netns() -> list[str]:
    """Names under /run/netns (what ``ip netns list`` shows), without the ``(id: N)`` suffix."""
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _proc_start(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot, /proc/PID/stat field 22); None if gone or a
    zombie (reaped here when it is our child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    now = _proc_start(pid)
    return now is not None and (start is None or now == start)


def _signal(pid: int, start: int | None, sig: int) -> None:
    if _alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Harness:
    """One netns cluster. ``Harness(prefix="t1-", run_dir=tmp)`` for a private one; use as a context manager
    (``with Harness(...) as h: h.up(3)``) or call ``down()`` in a ``finally``: it cleans in every case.

    State lives in ``run_dir/harness.json``, so separate processes (the command line) share one cluster.
    """

    def __init__(
        self,
        *,
        prefix: str = "",
        run_dir: Path | str = DEFAULT_RUN_DIR,
        dataplane: str = "auto",
        profile: str = "local",
        agent: str | None = None,
        die_with_parent: bool = False,
        extra_args: Sequence[str] = (),
        log: Callable[[str], None] | None = None,
    ) -> None:
        if prefix and not _PREFIX_RE.match(prefix):
            raise HarnessError(f"prefix {prefix!r}: 1-12 of [a-z0-9-], starting with a letter or digit")
        if dataplane not in ("auto", "kernel", "none"):
            raise HarnessError(f"dataplane {dataplane!r}: use auto, kernel or none")
        self.prefix = prefix
        self.run_dir = Path(run_dir)
        self.dataplane = dataplane
        self.profile = profile
        self.agent = agent
        self.die_with_parent = die_with_parent
        self.extra_args = list(extra_args)
        self.log = log or (lambda _msg: None)
        self.underlay = f"{prefix}{UNDERLAY}"
        self._procs: dict[str, subprocess.Popen] = {}
        self._pattern = re.compile(rf"^{re.escape(prefix)}(?:{UNDERLAY}|h\d+|h\d+-.+)$")

    # ----------------------------------------------------------------------------------------- names

    def host_netns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def host_names(self) -> list[str]:
        hosts = self.state().get("hosts", {})
        return sorted(hosts, key=lambda h: hosts[h]["index"])

    def api(self, host: str) -> str:
        return str(self.run_dir / f"{self.resolve_host(host)}.sock")

    def resolve_host(self, host: str | int) -> str:
        """``"h2"``, ``"2"`` or ``2`` -> ``"h2"`` (must be up)."""
        text = str(host)
        name = text if text.startswith("h") else f"h{text}"
        if name not in self.state().get("hosts", {}):
            known = ", ".join(self.host_names()) or "none (run up first)"
            raise HarnessError(f"no host {text!r}; hosts: {known}")
        return name

    def owns_netns(self, name: str) -> bool:
        """Whether ``down`` would delete namespace ``name`` (the harness's naming pattern)."""
        return bool(self._pattern.match(name))

    # ------------------------------------------------------------------------------------ bookkeeping

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def state(self) -> dict[str, Any]:
        """The bookkeeping as last saved (empty when there is none or it is unreadable)."""
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive access to the bookkeeping; yields the state, saved on exit (also on error)."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.run_dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state()
            try:
                yield state
            finally:
                self._save(state)

    # ----------------------------------------------------------------------------------------- up

    def agent_supports_kernel(self) -> bool:
        """Whether this meshnet-agent runs ``--dataplane kernel`` (it then has ``--netns-prefix``)."""
        out = _run([self.agent or agent_binary(), "run", "--help"], check=False).stdout
        return "--netns-prefix" in out

    def up(self, hosts: int, *, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Create the underlay and ``hosts`` host namespaces, start an agent in each, wait until every agent
        sees every host alive. On failure everything is removed again and ``HarnessError`` is raised."""
        if not 1 <= hosts <= MAX_HOSTS:
            raise HarnessError(f"--hosts must be 1..{MAX_HOSTS}")
        if os.geteuid() != 0:
            raise HarnessError("the netns harness needs root (network namespaces)")
        leftovers = [n for n in list_netns() if self.owns_netns(n)]
        if self.state().get("hosts") or leftovers:
            raise HarnessError(
                f"a harness is already up or left over in {self.run_dir} "
                f"(namespaces: {', '.join(leftovers) or 'none'}); run `python -m sim.netns down` first"
            )
        dataplane = self.dataplane
        if dataplane == "auto":
            dataplane = "kernel" if self.agent_supports_kernel() else "none"
        try:
            self._create(hosts, dataplane)
            self.wait_converged(timeout=timeout)
        except BaseException:
            self.log("up failed; removing what was created")
            with contextlib.suppress(Exception):
                self.log(self.describe_failure())
            self.down()
            raise

    def _create(self, hosts: int, dataplane: str) -> None:
        agent = self.agent or agent_binary()
        with self._locked() as st:
            st.update(
                version=1,
                prefix=self.prefix,
                underlay=self.underlay,
                dataplane=dataplane,
                profile=self.profile,
                hosts={},
                networks={},
                containers={},
                netns=[],
                started=time.time(),
            )
        self._add_netns(self.underlay)
        _ip_batch(
            self.underlay,
            ["link set lo up", f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up"],
        )
        links: list[str] = []
        for i in range(1, hosts + 1):
            ns = self.host_netns(f"h{i}")
            self._add_netns(ns)
            links += [
                f"link add u-h{i} type veth peer name eth0 netns {ns}",
                f"link set u-h{i} master {BRIDGE}",
                f"link set u-h{i} up",
            ]
        _ip_batch(self.underlay, links)
        for i in range(1, hosts + 1):
            _ip_batch(
                self.host_netns(f"h{i}"),
                [
                    "link set lo up",
                    f"addr add {host_addr(i)}/{UNDERLAY_PREFIX_LEN} dev eth0",
                    "link set eth0 up",
                ],
            )
        self.log(f"underlay {self.underlay} ({BRIDGE}) and {hosts} host namespaces created")
        self._start_agent(agent, 1, dataplane)
        self._wait_api("h1")
        for i in range(2, hosts + 1):
            self._start_agent(agent, i, dataplane)
        for i in range(2, hosts + 1):
            self._wait_api(f"h{i}")
        self.log(f"{hosts} agents running (--dataplane {dataplane})")

    def _add_netns(self, name: str) -> None:
        with self._locked() as st:
            st.setdefault("netns", []).append(name)  # recorded before it exists: down tolerates missing
        _run(["ip", "netns", "add", name])

    def agent_argv(self, agent: str, index: int, dataplane: str) -> list[str]:
        host = f"h{index}"
        argv = [agent, "run", "--name", host, "--bind", f"{host_addr(index)}:{GOSSIP_PORT}"]
        argv += ["--api", str(self.run_dir / f"{host}.sock")]
        argv += ["--state-dir", str(self.run_dir / f"{host}.state")]
        argv += ["--profile", self.profile, "--dataplane", dataplane]
        if dataplane == "kernel":
            argv += ["--netns-prefix", f"{self.host_netns(host)}-"]
        if index > 1:
            argv += ["--join", f"{host_addr(1)}:{GOSSIP_PORT}"]
        return argv + self.extra_args

    def enter_argv(self, host: str) -> list[str]:
        """How an agent enters its host namespace: ``nsenter --net=/run/netns/hI``, which changes the network
        namespace only. ``ip netns exec`` would also give the agent a private (slave) mount namespace, and
        the namespaces the agent creates (``/run/netns/hI-ov-VNI``, ``hI-sb-NAME``: bind mounts) would then
        exist only inside it, unusable from anywhere else."""
        return ["nsenter", f"--net=/run/netns/{self.host_netns(host)}", "--"]

    def _start_agent(self, agent: str, index: int, dataplane: str) -> None:
        host = f"h{index}"
        argv = [*self.enter_argv(host), *self.agent_argv(agent, index, dataplane)]
        log_path = self.run_dir / f"{host}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the harness's terminal does not reach the agents
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._procs[host] = proc
        start = None
        for _ in range(100):  # the child exists at once; /proc/PID/stat is readable right away
            start = _proc_start(proc.pid)
            if start is not None or proc.poll() is not None:
                break
            time.sleep(0.01)
        with self._locked() as st:
            st["hosts"][host] = {
                "index": index,
                "netns": self.host_netns(host),
                "addr": host_addr(index),
                "pid": proc.pid,
                "start": start,
                "argv": argv,
                "api": str(self.run_dir / f"{host}.sock"),
                "log": str(log_path),
                "state_dir": str(self.run_dir / f"{host}.state"),
            }

    def _check_agents(self, hosts: Sequence[str] | None = None) -> None:
        hosts_state = self.state().get("hosts", {})
        for host in hosts or list(hosts_state):
            rec = hosts_state[host]
            if not _alive(rec["pid"], rec.get("start")):
                proc = self._procs.get(host)
                code = proc.poll() if proc is not None else None
                raise HarnessError(
                    f"agent {host} (pid {rec['pid']}) is not running"
                    + (f" (exit code {code})" if code is not None else "")
                    + f"; its log:\n{self.log_tail(host)}"
                )

    def _wait_api(self, host: str, timeout: float = API_TIMEOUT) -> None:
        def ready() -> bool:
            self._check_agents([host])
            try:
                ctl.call(self.api(host), "GET", "/v1/agent", timeout=5)
            except (ctl.AgentUnreachable, ctl.AgentError):
                return False
            return True

        wait_until(ready, timeout, f"{host}'s API")

    def members(self, host: str) -> list[dict[str, Any]]:
        return self.call(host, "GET", "/v1/members")["members"]

    def alive_members(self, host: str) -> set[str]:
        try:
            members = self.members(host)
        except (ctl.AgentUnreachable, ctl.AgentError):
            return set()
        return {m["name"] for m in members if m["state"] == "alive"}

    def wait_converged(self, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Until every agent sees every host alive (raises HarnessError with the logs on timeout or if an
        agent died)."""
        hosts = set(self.host_names())

        def converged() -> bool:
            self._check_agents()
            return all(self.alive_members(h) >= hosts for h in hosts)

        wait_until(converged, timeout, f"every agent to see all {len(hosts)} hosts alive")

    # -------------------------------------------------------------------------------- API helpers

    def call(self, host: str, method: str, target: str, body: Any = None, *, timeout: float = CALL_TIMEOUT):
        return ctl.call(self.api(host), method, target, body=body, timeout=timeout)

    def _get_or_none(self, host: str, target: str) -> Any:
        try:
            return self.call(host, "GET", target, timeout=10)
        except ctl.AgentError as err:
            if err.status == 404:
                return None
            raise

    # -------------------------------------------------------------------------------- containers

    def container(
        self,
        name: str,
        *,
        host: str | int,
        network: str,
        aliases: Sequence[str] = (),
        ip: str | None = None,
        subnet: str | None = None,
        timeout: float = NETWORK_SPREAD_TIMEOUT,
    ) -> dict[str, Any]:
        """Attach a new container ``name`` (a sandbox created by the host's agent) to ``network`` on ``host``;
        the network is created on that host on first use. Returns the container's record (``host``,
        ``network``, ``netns``, ``ip``, ``endpoint``: the API's answer)."""
        if not _NAME_RE.match(name):
            raise HarnessError(f"container name {name!r}: letters, digits, '_', '.', '-' (at most 63)")
        host = self.resolve_host(host)
        if name in self.state().get("containers", {}):
            raise HarnessError(f"container {name!r} exists (on {self.state()['containers'][name]['host']})")
        self._ensure_network(host, network, subnet, timeout)
        body: dict[str, Any] = {"network": network, "sandbox": name, "name": name}
        if aliases:
            body["aliases"] = list(aliases)
        if ip:
            body["ip"] = ip
        answer = self.call(host, "POST", "/v1/attach", body)  # {sandbox, endpoint}
        endpoint = answer.get("endpoint", answer) if isinstance(answer, dict) else {}
        sandbox = answer.get("sandbox", {}) if isinstance(answer, dict) else {}
        record = {
            "host": host,
            "network": network,
            "netns": sandbox.get("netns") or _find(answer, "netns") or f"{self.host_netns(host)}-sb-{name}",
            "ip": _strip_prefix(endpoint.get("ipv4") or _find(answer, "ipv4")),
            "aliases": list(aliases),
            "endpoint": endpoint,
        }
        record["netns"] = Path(str(record["netns"])).name  # "/run/netns/NAME" -> "NAME"
        with self._locked() as st:
            st.setdefault("containers", {})[name] = record
        self._wait_resolv_conf(host, record["netns"])
        return record

    def _wait_resolv_conf(self, host: str, netns: str, timeout: float = 10.0) -> None:
        """With the DNS service running, wait (bounded) until it wrote the sandbox's resolv.conf: ``ip netns
        exec`` bind-mounts /etc/netns/NAME/resolv.conf only if it exists when the command starts, and a
        command started before would ask the host's upstreams (unreachable here) and stall."""
        info = self._get_or_none(host, "/v1/agent")
        if not isinstance(info, dict) or "dns" not in (info.get("services") or {}):
            return
        path = Path("/etc/netns") / netns / "resolv.conf"
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _ensure_network(self, host: str, network: str, subnet: str | None, timeout: float) -> None:
        known = self.state().get("networks", {})
        if network not in known and self._get_or_none(host, f"/v1/networks/{network}") is None:
            body: dict[str, Any] = {"name": network}
            if subnet:
                body["subnet"] = subnet
            answer = self.call(host, "POST", "/v1/networks", body)
            with self._locked() as st:
                st.setdefault("networks", {})[network] = {"host": host, "id": _find(answer, "id")}
            return
        if network not in known:
            with self._locked() as st:
                st.setdefault("networks", {})[network] = {"host": None, "id": None}
        wait_until(
            lambda: self._get_or_none(host, f"/v1/networks/{network}") is not None,
            timeout,
            f"network {network!r} to reach {host}",
        )

    def remove_container(self, name: str) -> None:
        """Delete the container's sandbox through its host's API (its endpoints go with it)."""
        rec = self.container_record(name)
        self.call(rec["host"], "DELETE", f"/v1/sandboxes/{name}")
        with self._locked() as st:
            st.get("containers", {}).pop(name, None)

    def container_record(self, name: str) -> dict[str, Any]:
        containers = self.state().get("containers", {})
        if name not in containers:
            known = ", ".join(sorted(containers)) or "none"
            raise HarnessError(f"no container {name!r}; containers: {known}")
        return containers[name]

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``ip netns exec <container's namespace> argv...``; also accepts a host (``h2``) or ``mnu``."""
        containers = self.state().get("containers", {})
        if name in containers:
            netns = containers[name]["netns"]
        elif name == UNDERLAY:
            netns = self.underlay
        else:
            netns = self.host_netns(self.resolve_host(name))
        return ["ip", "netns", "exec", netns, *argv]

    def exec(self, name: str, argv: Sequence[str], *, timeout: float = 60, check: bool = False):
        """Run ``argv`` inside container (or host) ``name``; a CompletedProcess with text output."""
        return subprocess.run(
            self.exec_argv(name, argv), capture_output=True, text=True, timeout=timeout, check=check
        )

    # ----------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """Hosts (pid, running, alive members as the host sees them), networks, containers, namespaces."""
        st = self.state()
        hosts = {}
        for host, rec in sorted(st.get("hosts", {}).items(), key=lambda kv: kv[1]["index"]):
            running = _alive(rec["pid"], rec.get("start"))
            hosts[host] = {
                "pid": rec["pid"],
                "addr": rec["addr"],
                "running": running,
                "alive_members": sorted(self.alive_members(host)) if running else [],
                "api": rec["api"],
                "log": rec["log"],
            }
        return {
            "run_dir": str(self.run_dir),
            "prefix": self.prefix,
            "underlay": st.get("underlay", self.underlay),
            "dataplane": st.get("dataplane"),
            "hosts": hosts,
            "networks": st.get("networks", {}),
            "containers": {
                k: {f: v[f] for f in ("host", "network", "netns", "ip", "aliases")}
                for k, v in st.get("containers", {}).items()
            },
            "netns": [n for n in list_netns() if self.owns_netns(n)],
        }

    def log_tail(self, host: str, lines: int = 20) -> str:
        try:
            text = (self.run_dir / f"{host}.log").read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "  (no log)"
        return "\n".join(f"  {line}" for line in text)

    def describe_failure(self) -> str:
        return "\n".join(f"--- {h} log:\n{self.log_tail(h)}" for h in self.host_names())

    # ------------------------------------------------------------------------------------- down

    def down(self) -> dict[str, Any]:
        """Stop every agent and process of the harness, delete its namespaces and files. Safe to call at any
        time, repeatedly, with or without (or with a corrupt) ``harness.json``. Returns what it removed."""
        st = self.state()
        report: dict[str, Any] = {"stopped": [], "killed": [], "netns": [], "files": []}
        # Our own children first (so they are reaped), then the recorded PIDs, then whatever is still inside
        # one of our namespaces (agents of a run whose bookkeeping is gone, commands left by exec).
        targets: dict[int, int | None] = {}
        for rec in st.get("hosts", {}).values():
            if isinstance(rec, dict) and isinstance(rec.get("pid"), int):
                targets[rec["pid"]] = rec.get("start")
        ours = sorted(set(st.get("netns", [])) | {n for n in list_netns() if self.owns_netns(n)})
        ours = [n for n in ours if self.owns_netns(n)]  # never act on a name outside the pattern
        for ns in ours:
            for pid in _netns_pids(ns):
                targets.setdefault(pid, _proc_start(pid))
        targets = {pid: start for pid, start in targets.items() if pid != os.getpid()}
        for grace in (LEAVE_GRACE, STOP_WAIT):
            for pid, start in targets.items():
                _signal(pid, start, signal.SIGTERM)
            self._wait_gone(targets, grace)
        for pid, start in targets.items():
            if _alive(pid, start):
                _signal(pid, start, signal.SIGKILL)
                report["killed"].append(pid)
            else:
                report["stopped"].append(pid)
        self._wait_gone(targets, KILL_WAIT)
        # Namespaces: the agents' own (sandboxes, overlays) first, then hosts, then the underlay. A second
        # pass catches namespaces an agent created while it was being stopped.
        for _ in range(2):
            current = set(list_netns())
            for ns in sorted(
                (n for n in set(ours) | current if self.owns_netns(n)),
                key=lambda n: (n == self.underlay, -len(n)),
            ):
                if ns in current:
                    proc = _run(["ip", "netns", "del", ns], check=False)
                    if proc.returncode == 0:
                        report["netns"].append(ns)
                etc = Path("/etc/netns") / ns
                if etc.is_dir():
                    shutil.rmtree(etc, ignore_errors=True)
                    report["files"].append(str(etc))
            ours = []
        report["files"] += self._remove_files()
        self._procs.clear()
        return report

    def _wait_gone(self, targets: dict[int, int | None], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._reap_children()
            if not any(_alive(p, s) for p, s in targets.items()) or time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def _reap_children(self) -> None:
        for proc in self._procs.values():
            proc.poll()

    def _remove_files(self) -> list[str]:
        removed: list[str] = []
        if not self.run_dir.is_dir():
            return removed
        own = re.compile(r"^(?:h\d+\.(?:sock|log|state)|harness\.(?:json|lock|tmp))$")
        for entry in self.run_dir.iterdir():
            if own.match(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                removed.append(str(entry))
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()  # only when nothing else is in it
        return removed

    # ------------------------------------------------------------------------------ context manager

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _find(obj: Any, key: str) -> Any:
    """The first value of ``key`` in a JSON answer, searching nested objects breadth-first."""
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            if cur.get(key) not in (None, "", []):
                return cur[key]
            queue += [v for v in cur.values() if isinstance(v, dict | list)]
        elif isinstance(cur, list):
            queue += [v for v in cur if isinstance(v, dict | list)]
    return None


def _strip_prefix(addr: Any) -> str | None:
    if isinstance(addr, list):
        addr = addr[0] if addr else None
    return str(addr).split("/", 1)[0] if addr else None


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``pred`` until true; ``HarnessError`` after ``timeout`` seconds (errors from ``pred`` propagate)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
